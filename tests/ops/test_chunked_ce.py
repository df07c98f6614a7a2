"""Chunked linear cross-entropy vs naive `F.cross_entropy(h @ w.T)`: loss and both gradients, fp32 on CPU."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from cptrain.ops.chunked_ce import linear_cross_entropy
from tests.dist_utils import run_ranks
from tests.ops.interpreted import assert_interpreted_ok

IGNORE = -100
TOL = dict(rtol=1e-5, atol=1e-5)


def naive_loss(h, w, y, reduction="sum", z_loss=0.0, softcap=None):
    z = (h @ w.t()).float()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    valid = y != IGNORE
    per_token = F.cross_entropy(z, y, ignore_index=IGNORE, reduction="none")
    per_token = per_token + torch.where(valid, z_loss * torch.logsumexp(z, -1).square(), 0.0)
    total = per_token.sum()
    return total / valid.sum().clamp(min=1) if reduction == "mean" else total


def make_case(n=37, h=16, v=50, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) * scale).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * scale).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.2] = IGNORE
    labels[8:16] = IGNORE  # with chunk_size 8 the second chunk has no valid label at all
    return hidden, weight, labels


def grads_of(loss_fn, hidden, weight, grad_scale=0.5):
    hidden.grad = weight.grad = None
    loss = loss_fn()
    (loss * grad_scale).backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("z_loss,softcap", [(0.0, None), (1e-2, None), (0.0, 3.0), (1e-2, 3.0)])
def test_matches_naive_loss_and_grads(reduction, z_loss, softcap):
    hidden, weight, labels = make_case()
    kw = dict(reduction=reduction, z_loss=z_loss, softcap=softcap)
    want = grads_of(lambda: naive_loss(hidden, weight, labels, **kw), hidden, weight)
    got = grads_of(lambda: linear_cross_entropy(hidden, weight, labels, chunk_size=8, **kw), hidden, weight)
    assert got[0].dtype == torch.float32 and got[0].ndim == 0
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("chunk_size", [1, 7, 37, 64, None])
def test_chunk_size_does_not_change_result(chunk_size):
    hidden, weight, labels = make_case(n=29, seed=3)
    want = grads_of(lambda: naive_loss(hidden, weight, labels, reduction="mean"), hidden, weight)
    got = grads_of(lambda: linear_cross_entropy(hidden, weight, labels, reduction="mean",
                                                chunk_size=chunk_size), hidden, weight)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_all_labels_ignored_gives_zero_not_nan(reduction):
    hidden, weight, labels = make_case(n=12)
    labels.fill_(IGNORE)
    loss, gh, gw = grads_of(lambda: linear_cross_entropy(hidden, weight, labels, reduction=reduction,
                                                         z_loss=1e-2, chunk_size=5), hidden, weight)
    assert loss.item() == 0.0
    assert torch.count_nonzero(gh) == 0 and torch.count_nonzero(gw) == 0


def test_large_logits_stay_finite():
    # logits in the hundreds overflow a naive exp; the log-sum-exp must not
    hidden, weight, labels = make_case(n=20, scale=6.0)
    want = grads_of(lambda: naive_loss(hidden, weight, labels), hidden, weight)
    got = grads_of(lambda: linear_cross_entropy(hidden, weight, labels, chunk_size=6), hidden, weight)
    assert torch.isfinite(got[0])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)


def test_tied_embeddings_get_both_gradients():
    """The head weight is also the embedding table: its gradient is the sum of both uses."""
    torch.manual_seed(1)
    vocab, dim, n = 40, 12, 23
    embed = torch.nn.Embedding(vocab, dim)
    proj = torch.nn.Linear(dim, dim)
    ids = torch.randint(0, vocab, (n,))
    labels = torch.roll(ids, -1)
    labels[-1] = IGNORE

    def run(loss_fn):
        embed.zero_grad(set_to_none=True)
        proj.zero_grad(set_to_none=True)
        loss = loss_fn(torch.tanh(proj(embed(ids))), embed.weight, labels)
        loss.backward()
        return loss.detach(), embed.weight.grad.clone(), proj.weight.grad.clone()

    want = run(naive_loss)
    got = run(lambda h, w, y: linear_cross_entropy(h, w, y, chunk_size=4))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_frozen_weight_and_no_grad():
    hidden, weight, labels = make_case(n=10)
    weight.requires_grad_(False)
    loss = linear_cross_entropy(hidden, weight, labels, chunk_size=3)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, labels, reduction="mean")
    assert not loss.requires_grad
    torch.testing.assert_close(loss, naive_loss(hidden, weight, labels, reduction="mean").detach(), **TOL)


def test_backward_twice_is_refused():
    hidden, weight, labels = make_case(n=10)
    loss = linear_cross_entropy(hidden, weight, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.parametrize("bad,match", [(dict(reduction="none"), "reduction"), (dict(softcap=0.0), "softcap"),
                                       (dict(chunk_size=0), "chunk_size"), (dict(impl="cuda"), "impl")])
def test_bad_arguments_name_the_argument(bad, match):
    hidden, weight, labels = make_case(n=4)
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(hidden, weight, labels, **bad)


# ---- vocabulary parallel over a real 2-process gloo group ------------------------------------------------

def _vocab_parallel_worker() -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # rank, world size and address from run_ranks' environment
    rank, world = dist.get_rank(), dist.get_world_size()
    # run_ranks tears the group down (a barrier first, so no rank closes while its peer still talks)
    for kw in ({"reduction": "sum"}, {"reduction": "mean", "z_loss": 1e-2, "softcap": 3.0}):
        hidden, weight, labels = make_case(v=51)  # 51 rows: uneven slices 26 / 25
        want = grads_of(functools.partial(naive_loss, hidden, weight, labels, **kw), hidden, weight)
        rows = weight.detach().chunk(world)[rank].clone().requires_grad_()
        hidden.grad = None
        loss = linear_cross_entropy(hidden, rows, labels, chunk_size=8, process_group=dist.group.WORLD,
                                    **kw)
        (loss * 0.5).backward()
        torch.testing.assert_close(loss.detach(), want[0], **TOL)
        torch.testing.assert_close(hidden.grad, want[1], **TOL)
        torch.testing.assert_close(rows.grad, want[2].chunk(world)[rank], **TOL)


def test_vocab_parallel_matches_single_process():
    run_ranks(2, _vocab_parallel_worker)


# ---- the Triton kernels, run by Triton's interpreter on CPU ----------------------------------------------

_INTERPRETED = """
import torch
from cptrain.ops.chunked_ce import linear_cross_entropy
from test_chunked_ce import grads_of, make_case
for kw in (dict(reduction="sum"), dict(reduction="mean", softcap=3.0), dict(reduction="mean", z_loss=1e-2, softcap=3.0)):
    h, w, y = make_case(n=21, v=70)
    want = grads_of(lambda: linear_cross_entropy(h, w, y, chunk_size=8, impl="torch", **kw), h, w)
    got = grads_of(lambda: linear_cross_entropy(h, w, y, chunk_size=8, impl="triton", **kw), h, w)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
print("ok")
"""


def test_triton_kernels_match_torch_path_in_interpreter():
    assert_interpreted_ok(_INTERPRETED)


# shifted_exp_ with 16-column blocks: row 0 jumps by 100 in its fourth block (past the 40 of slack: the row so far
# is rescaled), row 1 rises block by block (slack 0: rescaled at every block), row 2's label is ignored; with and
# without z-loss, and as one rank's vocabulary slice (target column left at 0, no row scale)
_SHIFTED_EXP = """
import torch
from cptrain.ops.triton_ce import shifted_exp_
g = torch.Generator().manual_seed(0)
logits = torch.randn(3, 70, generator=g)
logits[0, 50] += 100.0
logits[1] += torch.arange(70) * 0.5
labels = torch.tensor([50, 3, -100])
scale = torch.tensor([0.5, 0.5, 0.0])
hit = torch.arange(2), labels[:2]
for slack in (40.0, 0.0):
    for softcap in (None, 20.0):
        z = logits if softcap is None else softcap * torch.tanh(logits / softcap)
        tanh_grad = 1 - (z / softcap) ** 2 if softcap is not None else torch.ones_like(z)
        for z_loss in (0.0, 1e-2):
            buf = logits.clone()
            lse, target, s, shift = shifted_exp_(buf, labels, scale, 0, -100, softcap, z_loss, block=16, slack=slack)
            c = 1 + 2 * z_loss * torch.logsumexp(z, dim=1)
            want = torch.softmax(z, dim=1) * (scale * c)[:, None]
            want[hit] -= scale[:2]
            want *= tanh_grad
            torch.testing.assert_close(lse, torch.logsumexp(z, dim=1))
            torch.testing.assert_close(target[:2], z[hit])
            assert target[2] == 0 and s[2] == 0
            torch.testing.assert_close(buf * s[:, None], want, rtol=1e-5, atol=1e-7)
        part = logits.clone()
        lse, target, _, shift = shifted_exp_(part, labels, scale, 0, -100, softcap, whole_row=False, block=16,
                                             slack=slack)
        want = torch.exp(z - shift[:, None]) * tanh_grad
        want[hit] = 0.0
        torch.testing.assert_close(lse, torch.logsumexp(z, dim=1))
        torch.testing.assert_close(part, want, rtol=1e-5, atol=1e-6)
print("ok")
"""


def test_one_pass_kernel_rescales_rows_whose_logits_jump():
    assert_interpreted_ok(_SHIFTED_EXP)


def test_chunk_rows_are_whole_matmul_tiles():
    from cptrain.ops.chunked_ce import _chunk_rows, default_chunk_size

    # the largest of GOOD_ROWS within ~768 MiB of bf16 logits
    assert default_chunk_size(128256, 2) == 3072  # 3139 rows fit the budget
    assert default_chunk_size(151936, 2) == 2304  # 2650 fit; 2560 is not a good count
    assert default_chunk_size(49152, 2) == 4096  # 8192 fit; larger counts were not measured
    assert default_chunk_size(600_000, 2) == 512  # 671 rows fit
    assert default_chunk_size(10**7, 2) == 512  # past the budget: 256-row chunks run at ~0.6 of the best count
    assert default_chunk_size(10**7, 16) == 256  # the torch path: never fewer than one step
    assert default_chunk_size(49152, 16) == 1024  # the torch path's fp32 buffers
    # equal chunks, rounded up to a step, never above chunk_size or the tokens ...
    assert _chunk_rows(8192, 5376) == 4096
    assert _chunk_rows(8192, 2304) == 2048  # 4 x 2048, not 3 x 2304 + 1280
    assert _chunk_rows(8192, 2048) == 2048
    assert _chunk_rows(8192, 1792) == 1792  # 4 x 1792 + 1024: equal ones would be 1792 too
    assert _chunk_rows(37, 64) == 37
    # ... unless the equal size is a poor count and chunk_size a good one: then full chunks and a short last one
    assert _chunk_rows(8192, 3072) == 3072  # 3072 + 3072 + 2048, not 3 x 2816
    assert _chunk_rows(32768, 3072) == 3072
    assert _chunk_rows(100, 7) == 7
