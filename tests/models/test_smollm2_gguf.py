"""The real SmolLM2-135M GGUF imports; its loss on stdlib text matches transformers' to 1e-3."""

import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from cptrain.models.hf import load_pretrained, resolve_model_path


def test_smollm2_gguf_loss_matches_transformers(smollm_tokenizer):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join((stdlib / name).read_text()[:1500] for name in ("textwrap.py", "shlex.py", "bisect.py"))
    ids = smollm_tokenizer(text, return_tensors="pt")["input_ids"][:, :512]

    path = resolve_model_path("builtin:smollm2-135m")
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref_loss = hf(ids, labels=ids).loss.item()

    ours = load_pretrained("builtin:smollm2-135m").eval()
    assert ours.args.n_layers == 30 and ours.args.tie_embeddings
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
    with torch.no_grad():
        loss = (ours(ids, labels=labels) / (ids.numel() - 1)).item()
        naive = F.cross_entropy(ours(ids)[0, :-1], ids[0, 1:]).item()
    assert abs(loss - ref_loss) < 1e-3, (loss, ref_loss)
    assert abs(naive - ref_loss) < 1e-3
    assert 0.5 < ref_loss < 4.0  # a real pretrained model on Python source
