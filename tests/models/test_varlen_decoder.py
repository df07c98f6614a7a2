"""The decoder on the varlen path (documents as sequences, ops/varlen.py): the same loss and gradients as
the masked reference, and compiled blocks that take a new document count without recompiling."""

import pytest
import torch

from cptrain.models.decoder import Decoder, varlen_max_bucket
from cptrain.models.presets import get_preset
from cptrain.ops.varlen import cu_seqlens_from_documents


def batch(b: int, s: int, cuts: list[list[int]]):
    ids = torch.randint(0, 512, (b, s))
    docs = torch.zeros(b, s, dtype=torch.int64)
    for row, row_cuts in enumerate(cuts):
        for i, c in enumerate(row_cuts):
            docs[row, c:] = 100 * row + i + 1
    return ids, docs, ids.roll(-1, 1)


def test_varlen_decoder_matches_reference_loss_and_gradients():
    model = Decoder(get_preset("debug"))
    model.init_weights()
    ids, docs, labels = batch(2, 48, [[5, 30], [17]])
    docs[1, 44:] = -1  # padding
    results = {}
    for backend in ("reference", "varlen"):
        model.set_attention_backend(backend)
        loss = model(ids, document_ids=docs, labels=labels)
        results[backend] = (loss, torch.autograd.grad(loss, list(model.parameters())))
    (ref, ref_grads), (out, grads) = results["reference"], results["varlen"]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    # offsets given by the caller (as the trainer does) are the same computation
    cu = cu_seqlens_from_documents(docs)
    given = model(ids, labels=labels, cu_seqlens=cu, max_seqlen=varlen_max_bucket(cu))
    torch.testing.assert_close(given, ref, atol=1e-5, rtol=1e-5)


def test_max_bucket_is_a_power_of_two_upper_bound():
    assert varlen_max_bucket(torch.tensor([0, 3, 200, 210], dtype=torch.int32)) == 256
    assert varlen_max_bucket(torch.tensor([0, 8192], dtype=torch.int32)) == 8192
    assert varlen_max_bucket(torch.tensor([0, 5], dtype=torch.int32)) == 128


def test_compiled_blocks_take_new_document_counts_without_recompiling():
    """The offsets' length is symbolic from the first compile; the longest-document bucket (an int) may cost
    one recompile, after which it is symbolic too."""
    model = Decoder(get_preset("debug").replace(n_layers=2))
    model.init_weights()
    model.set_attention_backend("varlen")
    for key in list(model.layers):
        model.layers[key] = torch.compile(model.layers[key], fullgraph=True)
    # (cuts per row, recompile allowed): document counts 4, 8, 3, 14; longest-document buckets 256, 256, 512, 128
    plan = [([[150], [150]], True), ([[3, 9, 30, 200], [11, 250]], False), ([[290], []], True),
            ([[1, 2, 3, 4, 5, 100, 200], [6, 20, 70, 150, 230]], False)]
    for row_cuts, may_recompile in plan:
        torch.compiler.set_stance("default" if may_recompile else "fail_on_recompile")
        try:
            ids, docs, labels = batch(2, 300, row_cuts)
            model(ids, document_ids=docs, labels=labels).backward()
        finally:
            torch.compiler.set_stance("default")


def test_explicit_varlen_on_a_gpu_without_the_kernel_is_refused():
    """Asked for by name on CUDA, varlen needs FlashAttention 4 (here: no CUDA, so no kernel); on CPU it runs
    the reference, and `auto` never needs the check."""
    from cptrain.config import ModelConfig
    from cptrain.configtools import ConfigError
    from cptrain.models.build import check_attention

    args = get_preset("debug")
    cfg = ModelConfig(preset="debug", init="random", tokenizer="x", attention="varlen")
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may have the kernel")
    with pytest.raises(ConfigError, match="flash-attn-4"):
        check_attention(cfg, args, torch.device("cuda"))
    check_attention(cfg, args, torch.device("cpu"))
    check_attention(ModelConfig(preset="debug", init="random", tokenizer="x"), args, torch.device("cuda"))
