"""TritonAdamW (interpreted on CPU tensors) against torch's AdamW: the update, grad_scale (the clip),
found_inf (a skipped step), several groups and dtypes, and state_dicts that move between the two."""

from __future__ import annotations

from tests.ops.interpreted import assert_interpreted_ok

_SCRIPT = """
import copy

import torch
from cptrain.ops import adamw
from cptrain.ops.adamw import TritonAdamW, keep_implementation_on_load

adamw.BLOCK, adamw.ITERS = 32, 2  # several programs per tensor, ragged last ones, in little time
SHAPES = [(130, 7), (5,), (64,), (3, 65), (1,)]


def params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]


def groups(ps):  # two groups: different lr and weight decay, like embeddings/norms vs matrices
    return [{"params": ps[:2], "lr": 1e-2, "weight_decay": 0.1}, {"params": ps[2:], "lr": 3e-3, "weight_decay": 0.0}]


def set_grads(ps, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in ps:
        p.grad = (torch.randn(p.shape, generator=gen) * 0.1).to(p.dtype)


def run(cls, dtype, steps=4, **kw):
    ps = params(dtype)
    opt = cls(groups(ps), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **kw)
    for i in range(steps):
        set_grads(ps, i)
        opt.step()
    return ps, opt


# fp32: the same formula as torch's fused kernel (fp32 arithmetic, one rounding)
got, opt = run(TritonAdamW, torch.float32)
want, ref = run(torch.optim.AdamW, torch.float32, fused=True)
for a, b in zip(got, want):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
for a, b in zip(got, want):
    sa, sb = opt.state[a], ref.state[b]
    assert float(sa["step"]) == float(sb["step"]) == 4.0
    torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-6, atol=1e-10)

# every load/store order of the kernel gives the same results: with and without the next block prefetched,
# and an odd number of blocks per program
defaults = adamw.ITERS, adamw.PREFETCH
for setting in ((3, True), (3, False), (2, not adamw.PREFETCH)):
    adamw.ITERS, adamw.PREFETCH = setting
    got, _ = run(TritonAdamW, torch.float32)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
adamw.ITERS, adamw.PREFETCH = defaults

# bf16 storage (parameters, gradients, moments): one step, within one bf16 spacing of torch's fused kernel
# (the interpreter truncates on a bf16 store where the GPU rounds to nearest; the GPU test checks bits)
got, _ = run(TritonAdamW, torch.bfloat16, steps=1)
want, _ = run(torch.optim.AdamW, torch.bfloat16, steps=1, fused=True)
for a, b in zip(got, want):
    torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -7, atol=1e-6)

# grad_scale divides the gradients (the trainer's clip); found_inf=1 changes nothing, step counts included
ps, ps_ref = params(torch.float32), params(torch.float32)
opt = TritonAdamW(groups(ps), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
ref = torch.optim.AdamW(groups(ps_ref), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
set_grads(ps, 0); set_grads(ps_ref, 0)
opt.grad_scale = torch.tensor(4.0)
for p in ps_ref:
    p.grad /= 4.0
opt.step(); ref.step()
for a, b in zip(ps, ps_ref):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
before = [p.detach().clone() for p in ps]
moments = [opt.state[p]["exp_avg"].clone() for p in ps]
opt.found_inf = torch.tensor(1.0)
set_grads(ps, 1)
opt.step()
assert all(torch.equal(a, b) for a, b in zip(ps, before))
assert all(torch.equal(opt.state[p]["exp_avg"], m) for p, m in zip(ps, moments))
assert all(float(opt.state[p]["step"]) == 1.0 for p in ps)
opt.found_inf = torch.tensor(0.0)
opt.step()
assert all(float(opt.state[p]["step"]) == 2.0 for p in ps) and not torch.equal(ps[0], before[0])

# a state_dict moves to torch's AdamW and back (into an optimizer that has stepped: its cached tables must
# follow the new state tensors), and training continues the same
got, opt = run(TritonAdamW, torch.float32, steps=2)
want, ref = run(torch.optim.AdamW, torch.float32, steps=2, fused=True)
keep_implementation_on_load(ref)
ref.load_state_dict(copy.deepcopy(opt.state_dict()))  # deep: a same-device load shares tensors
for a, b in zip(got, want):
    b.data.copy_(a.data)
set_grads(want, 2)
ref.step()  # torch's AdamW alone moves on: its state now differs from opt's
opt.load_state_dict(copy.deepcopy(ref.state_dict()))
assert ref.param_groups[0]["fused"] and not opt.param_groups[0]["fused"] and opt.param_groups[0]["capturable"]
for a, b in zip(got, want):
    a.data.copy_(b.data)
for ps_, o in ((want, ref), (got, opt)):
    set_grads(ps_, 3)
    o.step()
for a, b in zip(got, want):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
print("ok")
"""


def test_triton_adamw_matches_torch_adamw_interpreted():
    assert_interpreted_ok(_SCRIPT)
