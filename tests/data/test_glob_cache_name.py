"""A glob source's token shard folder is visible: `corpus/*.jsonl*` is named '.jsonl' (its last part without the
data extensions and '*'), and `data.cache_dir/.jsonl` is a hidden folder that `ls` and most cleanup scripts
skip. Sources whose folder was visible keep it, so existing caches are still found."""

from __future__ import annotations

from cptrain.cli import main as cli
from cptrain.config import load_config
from cptrain.data import build_train_loader
from tests.data.data_helpers import doc_text, write_jsonl


def test_a_glob_source_tokenizes_into_a_visible_stable_folder(tmp_path, smollm_tokenizer, capsys):
    for part in (1, 2):
        write_jsonl(tmp_path / "corpus" / f"part-{part}.jsonl", [doc_text(f"p{part}", i) for i in range(20)])
    cache = tmp_path / "cache"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"""
[model]
path = "{smollm_tokenizer.name_or_path}"
[data]
cache_dir = "{cache}"
[[data.sources]]
path = "{tmp_path / "corpus" / "*.jsonl*"}"
[[data.sources]]
path = "{tmp_path / "corpus" / "part-1.jsonl"}"
[[data.sources]]
name = ".second"
path = "{tmp_path / "corpus" / "part-2.jsonl"}"
""")
    cfg = load_config(str(recipe), [])
    assert [s.name for s in cfg.data.sources] == [".jsonl", "part-1", ".second"]  # the names themselves stay
    assert cli(["tokenize", str(recipe)]) == 0
    folders = sorted(p.name for p in cache.iterdir())
    assert len(folders) == 3 and not [f for f in folders if f.startswith(".")], folders
    assert "part-1" in folders  # a plain file's source keeps the folder it always had
    capsys.readouterr()
    assert cli(["tokenize", str(recipe)]) == 0  # stable: the second run finds every shard where it left it
    assert capsys.readouterr().out.count("up to date in") == 3
    loader = build_train_loader(load_config(str(recipe), ["data.mode='pretokenized'"]).data, smollm_tokenizer,
                                seq_len=32, micro_batch_size=2)
    assert next(loader)["input_ids"].shape == (2, 32)
