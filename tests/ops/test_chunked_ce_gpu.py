"""Chunked linear cross-entropy on CUDA: bf16 Triton path vs an fp32 reference, and vs the bf16 torch path."""

from __future__ import annotations

import pytest
import torch

from cptrain.ops import chunked_ce
from cptrain.ops.chunked_ce import linear_cross_entropy
from tests.ops.test_chunked_ce import naive_loss  # the fp32 reference (inputs are upcast here)

pytestmark = pytest.mark.gpu
IGNORE = -100


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def bf16_case(n: int, h: int, v: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(n, h, device="cuda", generator=g).bfloat16()
    weight = (torch.randn(v, h, device="cuda", generator=g) * h**-0.5 * 2).bfloat16()
    labels = torch.randint(0, v, (n,), device="cuda", generator=g)
    labels[torch.rand(n, device="cuda", generator=g) < 0.1] = IGNORE
    labels[1024:2048] = IGNORE  # one whole chunk with nothing to learn from
    return hidden, weight, labels


def loss_and_grads(fn, hidden, weight):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    loss = fn(h, w)
    loss.backward()
    return loss.detach(), h.grad, w.grad


# all three take the one-pass kernel (z-loss folded into its row scale and target column)
@pytest.mark.parametrize("kw", [dict(reduction="sum"), dict(reduction="mean", softcap=30.0),
                                dict(reduction="mean", z_loss=1e-4, softcap=30.0)],
                         ids=["sum", "mean-softcap", "mean-zloss-softcap"])
def test_bf16_triton_vs_fp32_reference(kw):
    hidden, weight, labels = bf16_case(4099, 1024, 50257)  # neither divides the chunk or the kernel block
    # the reference sees the same bf16-rounded inputs, upcast: only the computation differs
    want = loss_and_grads(lambda h, w: naive_loss(h.float(), w.float(), labels, **kw), hidden, weight)
    got = loss_and_grads(lambda h, w: linear_cross_entropy(h, w, labels, chunk_size=1024, impl="triton",
                                                           **kw),
                         hidden, weight)
    assert got[1].dtype == torch.bfloat16 and got[2].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], want[0], rtol=2e-3, atol=1e-3)
    assert rel_err(got[1], want[1]) < 1e-2
    assert rel_err(got[2], want[2]) < 1e-2


def test_confident_predictions_keep_their_gradient():
    """Targets the model already predicts with p ~ 0.95-1: their logit's gradient p - 1 is small and must be
    taken in fp32 before any bf16 rounding (the one-pass kernel writes it at the end of the row). Against the
    torch path, which rounds the logits to bf16 the same way (at these magnitudes that rounding alone moves
    the loss by more than the fp32 reference's tolerances), then computes in fp32."""
    hidden, weight, labels = bf16_case(2048, 1024, 32000, seed=3)
    hidden = hidden * 32  # logits with a standard deviation of ~64: the top one usually leads by ~10 or more
    labels = (hidden.float() @ weight.float().t()).argmax(dim=1)
    kw = dict(reduction="mean", chunk_size=512)
    ref = loss_and_grads(lambda h, w: linear_cross_entropy(h, w, labels, impl="torch", **kw), hidden, weight)
    got = loss_and_grads(lambda h, w: linear_cross_entropy(h, w, labels, impl="triton", **kw), hidden, weight)
    p_target = torch.exp(-ref[0]).item()  # the geometric mean of the targets' probabilities
    assert p_target > 0.9, p_target
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-5)
    assert rel_err(got[1], ref[1]) < 5e-3
    assert rel_err(got[2], ref[2]) < 5e-3


def test_triton_path_matches_torch_path():
    hidden, weight, labels = bf16_case(3000, 512, 32001, seed=1)
    kw = dict(reduction="mean", z_loss=1e-3, softcap=15.0, chunk_size=1024)
    ref = loss_and_grads(lambda h, w: linear_cross_entropy(h, w, labels, impl="torch", **kw), hidden, weight)
    got = loss_and_grads(lambda h, w: linear_cross_entropy(h, w, labels, impl="triton", **kw), hidden, weight)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    assert rel_err(got[1], ref[1]) < 5e-3
    assert rel_err(got[2], ref[2]) < 5e-3


def test_llama3_vocab_default_chunking_memory_and_accuracy():
    """Llama 3 vocabulary, default chunk size: matches fp32 and holds far less than the logits would need."""
    n, h, v = 16384, 2048, 128256
    hidden, weight, labels = bf16_case(n, h, v, seed=2)
    want = loss_and_grads(lambda a, b: naive_loss(a.float(), b.float(), labels, reduction="mean"), hidden,
                          weight)
    hid = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = linear_cross_entropy(hid, w, labels, reduction="mean")
    loss.backward()
    torch.cuda.synchronize()
    grads = 2 * (hid.numel() + w.numel())  # the two bf16 gradients are outputs, not overhead
    extra = torch.cuda.max_memory_allocated() - base - grads
    # the default chunk's logits buffer (3072 rows here, 752 MiB) and small per-row vectors
    assert extra < chunked_ce._LOGITS_BUDGET_BYTES + 64 * 2**20, \
        f"{extra / 2**20:.0f} MiB beyond inputs and grads (bf16 logits alone: {n * v * 2 / 2**30:.1f} GiB)"
    torch.testing.assert_close(loss.detach(), want[0], rtol=1e-3, atol=1e-3)
    assert rel_err(hid.grad, want[1]) < 1e-2
    assert rel_err(w.grad, want[2]) < 1e-2


@pytest.mark.parametrize("slack", [40.0, 0.0], ids=["default-slack", "rescale-every-block"])
def test_one_pass_kernel_on_gpu_rescales_rows_whose_logits_jump(slack):
    """The compiled kernel's rescale branch (the CPU test runs the interpreter): rows whose later blocks hold much
    larger logits, bf16 storage, against fp32 softmax."""
    from cptrain.ops.triton_ce import shifted_exp_

    g = torch.Generator(device="cuda").manual_seed(4)
    logits = torch.randn(64, 50000, device="cuda", generator=g) * 3
    logits[::2, 40000] += 90.0  # past the default slack: the even rows are rescaled once
    logits[1::4] += torch.linspace(0, 60, 50000, device="cuda")  # rising across the blocks
    labels = torch.randint(0, 50000, (64,), device="cuda", generator=g)
    labels[::2] = 40000
    labels[3] = IGNORE
    scale = torch.full((64,), 0.25, device="cuda")
    scale[3] = 0.0
    buf = logits.bfloat16()
    z = buf.float()  # what the kernel reads, before it overwrites buf
    lse, target, s, _ = shifted_exp_(buf, labels, scale, 0, IGNORE, None, slack=slack)
    want = torch.softmax(z, dim=1) * scale[:, None]
    rows = torch.arange(64, device="cuda")[labels != IGNORE]
    want[rows, labels[rows]] -= scale[rows]
    torch.testing.assert_close(lse, torch.logsumexp(z, dim=1), rtol=1e-5, atol=1e-4)
    assert rel_err(buf.float() * s[:, None], want) < 1e-2
    assert s[3] == 0


def test_fp16_takes_the_two_pass_kernels():
    """fp16 logits cannot hold the one-pass kernel's unscaled values (up to e^40 and the row's sum): with a row
    sum above 65504 (a 128K vocabulary of near-equal logits) the fp16 call must still match the torch path."""
    g = torch.Generator(device="cuda").manual_seed(5)
    hidden = (torch.randn(1024, 256, device="cuda", generator=g) * 0.01).half()
    weight = (torch.randn(128256, 256, device="cuda", generator=g) * 0.01).half()
    labels = torch.randint(0, 128256, (1024,), device="cuda", generator=g)
    kw = dict(reduction="mean", chunk_size=512)
    ref = loss_and_grads(lambda h, w: linear_cross_entropy(h, w, labels, impl="torch", **kw), hidden, weight)
    got = loss_and_grads(lambda h, w: linear_cross_entropy(h, w, labels, impl="triton", **kw), hidden, weight)
    assert torch.isfinite(got[1]).all() and torch.isfinite(got[2]).all()
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    assert rel_err(got[1], ref[1]) < 5e-3
    assert rel_err(got[2], ref[2]) < 5e-3
    with pytest.raises(ValueError, match="fp16 logits"):
        from cptrain.ops.triton_ce import shifted_exp_

        shifted_exp_(torch.zeros(2, 8, device="cuda", dtype=torch.float16), labels[:2] % 8,
                     torch.ones(2, device="cuda"), 0, IGNORE, None)
