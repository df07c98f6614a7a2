"""The tiled MLP through the real trainer (`cptrain.train.run`, what `cptrain run` calls) on CPU, in fp32
unless said otherwise:

- `model.tiled_mlp = 3` under `activation_checkpointing = "full"` trains like the untiled model without
  checkpointing (per-step losses to fp32 rounding: the tiles sum the weight gradients in another order), and
  bit for bit like the tiled model without checkpointing (the recompute's skipped forward changes nothing);
  on one rank (fp32 parameters, no FSDP2) and on two gloo ranks (FSDP2);
- the same under `model.compile = true` (the tiled MLP is a graph break inside the compiled, checkpointed block);
- bf16 activations over fp32 master weights (one rank, no FSDP2): the fast path casting the weights per pass;
- stop at step 4, resume to step 6: the losses equal the uninterrupted run's, bit for bit, on 1 and 2 ranks.

Every run counts the tiled forwards by path: the hand-written fast path, its skipped recompute under
checkpointing (once per block and micro-batch), never the generic path; so no check passes by tiling nothing.
A 512-token BPE tokenizer trained on the corpus keeps the debug model's vocabulary (SmolLM2's 49K-row lm_head
and its AdamW state would take most of each step)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from cptrain.config import load_config
from cptrain.train import run
from tests.dist_utils import run_ranks

STEPS, MICRO, GLOBAL, LAYERS = 6, 1, 2, 2  # LAYERS: the debug preset's
TILED = ("model.tiled_mlp=3",)  # a fixed count: "auto" would not tile 64 tokens (tiles of 22, 22, 20)
TILED_AC = (*TILED, "model.activation_checkpointing=full")
RTOL = 1e-4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, str]:
    """12 real stdlib files as .txt documents, and a 512-token byte-level BPE tokenizer trained on them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("corpus")
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:12]:
        shutil.copy(f, root / (f.stem + ".txt"))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train([str(p) for p in sorted(root.iterdir())],
              trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(tok)
    return str(root), str(tok)


def _cfg(run_dir: str, corpus: tuple[str, str], extra: tuple[str, ...]):
    """6 steps of the debug preset, 2 micro-batches of one 64-token row per step on one rank (one each on two),
    a checkpoint every 3 steps, one eval batch and a 2-token sample before and after."""
    root, tok = corpus
    return load_config(None, [
        "model.preset=debug", "model.init=random", f"model.tokenizer='{tok}'",
        f"data.sources=[{{path='{root}', format='txt'}}]", "data.eval_fraction=0.1",
        "precision.param_dtype=fp32", f"train.steps={STEPS}", "train.seq_len=64", f"train.micro_batch_size={MICRO}",
        f"train.global_batch_size={GLOBAL}", "train.device=cpu", f"train.run_dir='{run_dir}'",
        "checkpoint.every_steps=3", "eval.max_batches=1", "eval.sample_tokens=2", "schedule.warmup_steps=2",
        "optim.lr=3e-3", *extra])


def _losses(run_dir: str) -> dict[int, float]:
    records = (json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def train(run_dir: str, corpus: tuple[str, str], extra: tuple[str, ...]) -> dict:
    """One `run` in this process (alone, or as one rank of run_ranks). Returns the per-step losses (rank 0
    logs them) and this rank's tiled forwards, counted by path: ("fast", "skipped" | "computed", "grad" |
    "no_grad") and ("generic",), plus the (activation, weight) dtypes the fast path saw."""
    from cptrain.ops import tiled_mlp as ops

    seen: Counter = Counter()
    dtypes: set = set()
    fast, generic = ops._TiledSwiGLU.forward, ops._TiledMLP.forward

    def counting_fast(ctx, x, num_tiles, skip, *weights):
        seen["fast", "skipped" if skip else "computed", "grad" if x.requires_grad else "no_grad"] += 1
        dtypes.add((str(x.dtype), str(weights[0].dtype)))
        return fast(ctx, x, num_tiles, skip, *weights)

    def counting_generic(ctx, *args):
        seen["generic",] += 1
        return generic(ctx, *args)

    ops._TiledSwiGLU.forward, ops._TiledMLP.forward = staticmethod(counting_fast), staticmethod(counting_generic)
    try:
        result = run(_cfg(run_dir, corpus, extra))
    finally:
        ops._TiledSwiGLU.forward, ops._TiledMLP.forward = staticmethod(fast), staticmethod(generic)
    losses = _losses(run_dir) if os.environ.get("RANK", "0") == "0" else None
    return {"losses": losses, "seen": dict(seen), "dtypes": dtypes, "result": result}


def train_all(jobs: list[tuple[str, tuple[str, ...], int]], corpus: tuple[str, str]) -> list[dict]:
    """Several runs one after another on the same ranks, each with its own MASTER_PORT. Every `run` sets up and
    tears down its process group, as a launch does. On one shared port, rank 1 could start its next run while
    rank 0 was still finishing the last one (only rank 0 writes the summary) and rendezvous against rank 0's
    previous store: both ranks then hung in the new ProcessGroupGloo's connect (seen here, reproducibly when
    rank 0 lagged by 3 s)."""
    outs = []
    for run_dir, extra, port in jobs:
        os.environ["MASTER_PORT"] = str(port)
        outs.append(train(run_dir, corpus, extra))
    return outs


def _free_ports(n: int) -> list[int]:
    """n distinct ports free now (all held open together, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _per_step(out: dict) -> list[float]:
    assert sorted(out["losses"]) == list(range(1, STEPS + 1)), out["losses"]
    return [out["losses"][s] for s in range(1, STEPS + 1)]


def _assert_close(got: list[float], want: list[float], rtol: float = RTOL) -> None:
    assert all(abs(a - b) <= rtol * abs(b) for a, b in zip(got, want, strict=True)), (got, want)


def _assert_fast_path(out: dict, world: int, checkpointed: bool, dtypes=(("torch.float32", "torch.float32"),)):
    """Every tiled forward took the fast path: one per block and micro-batch in training (and under full
    checkpointing as many skipped recomputes), no-grad ones for eval and the sample."""
    per_rank = STEPS * GLOBAL // (MICRO * world) * LAYERS
    seen = out["seen"]
    assert ("generic",) not in seen, seen
    assert seen.get(("fast", "computed", "grad")) == per_rank, (seen, per_rank)
    assert seen.get(("fast", "skipped", "grad"), 0) == (per_rank if checkpointed else 0), (seen, per_rank)
    assert seen.get(("fast", "computed", "no_grad"), 0) > 0, seen  # held-out loss and sample, tiled too
    assert ("fast", "skipped", "no_grad") not in seen, seen  # outside a backward nothing is skipped
    assert out["dtypes"] == set(dtypes), out["dtypes"]


@pytest.fixture(scope="module")
def untiled(tmp_path_factory, corpus) -> list[float]:
    """The one-rank reference: no tiling, no checkpointing, no compile."""
    out = train(str(tmp_path_factory.mktemp("untiled")), corpus, ())
    assert out["seen"] == {}
    return _per_step(out)


def test_one_rank_tiled_under_checkpointing_trains_like_untiled_and_resumes_bitwise(tmp_path, corpus, untiled):
    tiled, tiled_ac = (train(str(tmp_path / name), corpus, extra) for name, extra in
                       (("tiled", TILED), ("tiled-ac", TILED_AC)))
    _assert_fast_path(tiled, world=1, checkpointed=False)
    _assert_fast_path(tiled_ac, world=1, checkpointed=True)
    _assert_close(_per_step(tiled_ac), untiled)
    assert _per_step(tiled_ac) == _per_step(tiled)  # the skipped recompute changes no bit

    resumed = str(tmp_path / "resumed")
    assert train(resumed, corpus, (*TILED_AC, "train.stop_at_step=4"))["result"] == {"stopped_at": 4}
    assert (Path(resumed) / "checkpoints" / "step-4" / "COMMITTED").is_file()
    out = train(resumed, corpus, TILED_AC)
    assert out["seen"][("fast", "skipped", "grad")] == 2 * GLOBAL // MICRO * LAYERS  # steps 5 and 6 only
    assert _per_step(out) == _per_step(tiled_ac)  # exact float equality


def test_one_rank_fp32_master_weights_with_bf16_activations(tmp_path, corpus):
    """precision.param_dtype=bf16 on one rank: fp32 parameters cast to bf16 where used, which the fast path
    now takes (one cast per pass, tile gradients summed in fp32). bf16 rounding: a looser bound."""
    bf16 = ("precision.param_dtype=bf16",)
    reference = train(str(tmp_path / "untiled"), corpus, bf16)
    tiled_ac = train(str(tmp_path / "tiled-ac"), corpus, (*bf16, *TILED_AC))
    _assert_fast_path(tiled_ac, world=1, checkpointed=True, dtypes=(("torch.bfloat16", "torch.float32"),))
    _assert_close(_per_step(tiled_ac), _per_step(reference), rtol=1e-3)


@pytest.mark.slow  # inductor's first compile: ~15 s on 2 cores
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's imports
def test_one_rank_compiled_tiled_under_checkpointing_trains_like_untiled(tmp_path, corpus, untiled):
    """model.compile=true: the checkpointed block is compiled around the tiled MLP's graph break."""
    import torch

    try:
        compiled = train(str(tmp_path / "compiled"), corpus, (*TILED_AC, "model.compile=true"))
    finally:
        torch._dynamo.reset()
    _assert_fast_path(compiled, world=1, checkpointed=True)
    _assert_close(_per_step(compiled), untiled)


def test_two_ranks_fsdp2_tiled_under_checkpointing_trains_like_untiled_and_resumes_bitwise(tmp_path, corpus):
    """Two gloo ranks (FSDP2 shards every block): untiled, tiled under checkpointing, and that run stopped at
    step 4 and resumed, all in one pair of spawned processes."""
    resumed = str(tmp_path / "resumed")
    runs = [(str(tmp_path / "untiled"), ()), (str(tmp_path / "tiled-ac"), TILED_AC),
            (resumed, (*TILED_AC, "train.stop_at_step=4")), (resumed, TILED_AC)]
    jobs = [(run_dir, extra, port) for (run_dir, extra), port in zip(runs, _free_ports(len(runs)), strict=True)]
    ranks = run_ranks(2, train_all, jobs, corpus)
    reference, tiled_ac, _, resumed_out = ranks[0]
    for rank in ranks:
        assert rank[0]["seen"] == {}
        _assert_fast_path(rank[1], world=2, checkpointed=True)  # FSDP2 hands the MLP plain unsharded weights
        assert rank[2]["result"] == {"stopped_at": 4}
    _assert_close(_per_step(tiled_ac), _per_step(reference))
    assert _per_step(resumed_out) == _per_step(tiled_ac)  # exact float equality
    step = Path(resumed) / "checkpoints" / "step-6"
    assert json.loads((step / "train_state.json").read_text())["world_size"] == 2
