"""Command-line and logger errors a user meets before any training: one line that says what to do."""

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from cptrain.cli import main
from cptrain.configtools import ConfigError
from cptrain.metrics import MetricsLogger


def test_run_without_recipe_names_only_the_recipe(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required: recipe" in err and "overrides" not in err.splitlines()[-1]


def test_inspect_model_suggests_the_closest_preset(capsys):
    assert main(["inspect-model", "llama3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cptrain: error: ") and "did you mean 'llama3." in err and "qwen3-8b" in err
    assert "model.path" not in err  # a recipe key: the command line has none


def test_inspect_model_names_what_is_not_a_model(tmp_path, capsys):
    """An empty name read as "." ("not a Hugging Face model directory"); a file of a model folder did not
    name the folder."""
    assert main(["inspect-model", ""]) == 2
    assert "inspect-model: the model is empty; give a preset name" in capsys.readouterr().err
    transformers = pytest.importorskip("transformers")
    transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2).save_pretrained(tmp_path)
    assert main(["inspect-model", str(tmp_path / "config.json")]) == 2
    assert f"one file of a model folder; give the folder: `cptrain inspect-model {tmp_path}`" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("flag", ["--max-new-tokens", "--seq-len", "--micro-batch-size"])
def test_counts_below_one_are_refused(flag, capsys):
    generate = flag == "--max-new-tokens"
    argv = ["generate", "builtin:smollm2-135m", "hi"] if generate else ["inspect-model", "debug"]
    with pytest.raises(SystemExit) as e:
        main([*argv, flag, "-3"])
    assert e.value.code == 2
    assert f"argument {flag}: expected an integer >= 1, got -3" in capsys.readouterr().err


def test_generate_refuses_an_empty_prompt(capsys):
    assert main(["generate", "builtin:smollm2-135m", ""]) == 2
    assert "the prompt is empty" in capsys.readouterr().err


def test_generate_refuses_a_prompt_of_no_tokens(smollm_tokenizer):
    """Library callers (the trainer's eval sample) get the same clear error instead of a reshape failure."""
    from cptrain.evaluate import generate
    from cptrain.models.decoder import Decoder
    from cptrain.models.presets import ModelArgs

    model = Decoder(ModelArgs(vocab_size=49152))
    with pytest.raises(ConfigError, match="the prompt '' is no tokens at all"):
        generate(model, smollm_tokenizer, "", 4, torch.device("cpu"))


def _run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    (run / "config.resolved.toml").write_text("")
    return run


def test_generate_on_a_run_folder_points_to_export(tmp_path, capsys):
    run = _run_folder(tmp_path)
    assert main(["generate", str(run), "def "]) == 2
    assert f"is a cptrain run folder, not a model: export it first with `cptrain export {run} OUT`" in (
        capsys.readouterr().err)
    step = run / "checkpoints" / "step-2"
    assert main(["generate", str(step), "def "]) == 2
    assert f"is a cptrain checkpoint, not a model: export it first with `cptrain export {step} OUT`" in (
        capsys.readouterr().err)


def test_generate_on_an_exported_run_folder_points_to_hf(tmp_path, capsys):
    run = _run_folder(tmp_path)
    (run / "hf").mkdir()
    (run / "hf" / "config.json").write_text("{}")
    assert main(["generate", str(run), "def "]) == 2
    assert f"`cptrain generate {run / 'hf'} PROMPT`" in capsys.readouterr().err


def test_missing_tensorboard_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as when tensorboard is not installed
    with pytest.raises(ConfigError, match=r"logging.tensorboard = true needs the tensorboard package: "
                                          r"pip install tensorboard"):
        MetricsLogger(tmp_path, 10, True, tensorboard=True)
    MetricsLogger(tmp_path, 10, False, tensorboard=True).close()  # other ranks never import it


def test_missing_wandb_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match="logging.wandb_project = 'proj' needs the wandb package"):
        MetricsLogger(tmp_path, 10, True, False, "proj")


def test_wandb_gets_the_run_config(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log = MetricsLogger(tmp_path, 10, True, False, "proj", config={"optim": {"lr": 1e-4}})
    log.log(1, {"loss": 2.0})
    log.close()
    assert calls[0] == ("init", {"project": "proj", "dir": str(tmp_path), "config": {"optim": {"lr": 1e-4}}})
    assert calls[1:] == [("log", {"loss": 2.0}, 1), ("finish",)]


def test_overrides_may_follow_the_dry_run_flag(capsys):
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny-cpu.toml"
    assert main(["run", str(recipe), "--dry-run", "train.steps=7"]) == 0
    assert "steps = 7" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", str(recipe), "--dry-run", "--bogus"])


def _cli(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cptrain.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_reader_that_stops_after_one_line_gets_no_traceback(tmp_path):
    """`cptrain run R --dry-run | head -1`: an output far larger than a pipe's buffer, so the writes after
    the reader closed fail for certain."""
    sources = "".join(f'[[data.sources]]\nname = "s{i}"\npath = "data/s{i}.jsonl"\n' for i in range(2000))
    path = tmp_path / "r.toml"
    path.write_text('[model]\npreset = "debug"\ninit = "random"\ntokenizer = "t"\n' + sources)
    proc = _cli("run", str(path), "--dry-run")
    assert proc.stdout.readline().strip() == "[model]"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait() == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_a_reader_gone_before_any_output_gets_no_traceback():
    proc = _cli("inspect-model", "debug")
    proc.stdout.close()  # before the child has imported anything, let alone printed (`| head -0`)
    err = proc.stderr.read()
    assert proc.wait() == 141, err
    assert "BrokenPipeError" not in err


def test_a_broken_pipe_elsewhere_is_still_reported():
    """Only a closed stdout is quiet: a broken pipe inside a command (a data-loader worker's) is a failure."""
    code = ("import sys, cptrain.cli as cli\n"
            "def fail(ns):\n    raise BrokenPipeError(32, 'worker pipe')\n"
            "cli._inspect_model = fail\n"
            "sys.exit(cli.main(['inspect-model', 'debug']))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "Traceback" in run.stderr and "worker pipe" in run.stderr


@pytest.mark.parametrize("command", ["run", "inspect-data", "tokenize"])
def test_a_binary_file_or_a_folder_as_the_recipe_is_one_line(command, tmp_path, capsys):
    """A model file (or a .gz) given where the recipe goes used to end in a UnicodeDecodeError traceback, and a
    folder was "config file not found" although it exists."""
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(b"\xc8\x01\x00\x00\xff\xfe" * 8)
    assert main([command, str(binary)]) == 2
    assert "not a TOML recipe (not UTF-8 text)" in capsys.readouterr().err
    assert main([command, str(tmp_path)]) == 2
    assert "is a directory, not a recipe" in capsys.readouterr().err
