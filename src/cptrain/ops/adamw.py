"""AdamW whose update is one Triton kernel over every tensor of a parameter group.

torch's fused AdamW (`multi_tensor_apply`) streams parameters, gradients and both moments at about half
of an H100's memory bandwidth in bf16 (55%; this kernel 83%). Here each kernel program updates one span
(BLOCK * ITERS elements) of one tensor, found through tables of device addresses (parameter, gradient,
moments, step count per tensor), so one launch covers the whole group at close to streaming speed.
Arithmetic is fp32 whatever the storage dtype, rounded once on store, with torch's AdamW formula (decoupled
weight decay, bias corrections from each tensor's step count).

It behaves like torch's fused AdamW towards the trainer: `grad_scale` (a device scalar the gradients are
divided by: the clip) and `found_inf` (a device flag: 1 leaves parameters, moments and step counts alone)
are read on the device, so a step needs no host sync. The state layout is torch's (`step` as a float32
device scalar, `exp_avg`, `exp_avg_sq` shaped like the parameter), so checkpoints move between the two.
FSDP2 parameters (DTensors) are updated through their local shards. TRITON_INTERPRET=1 runs the kernel on
CPU tensors, which is how the CPU tests check it.
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: build_optimizer picks torch's AdamW
    triton = None

# Small one-warp programs, each loading its next block before it updates the current one, kept HBM busiest:
# 6.2 ms for llama3.2-1b's bf16 step on an H100 (83% of its bandwidth) against 7.4 ms with 8-warp programs
# of 2 x 2048 elements (benchmarks/kernels_adamw.py; results/2026-11-23-1xh100-kernels-adamw-small.md).
BLOCK = 256  # elements per step of a program's loop
ITERS = 4  # steps per program (unrolled): a program updates BLOCK * ITERS elements of one tensor
NUM_WARPS = 1
PREFETCH = True  # load a program's next block before updating the current one
_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def triton_adamw_available(device_type: str) -> bool:
    return triton is not None and device_type == "cuda"


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if hasattr(t, "_local_tensor") else t  # DTensor (FSDP2): this rank's shard


class _Launch:
    """One kernel launch: the tensors of one group with one (parameter, gradient) dtype pair. Device tables:
    `ptrs` [4, n] addresses of parameter, exp_avg, exp_avg_sq and step count (fixed while the state objects
    are), `grads` [n] (an AddressTable: gradients are new tensors each step), and `blocks` (a BlockTable:
    numels, and per program the tensor it updates and its first element)."""

    def __init__(self, dtypes: tuple, index: list[int], local: list[tuple], steps: list[torch.Tensor],
                 device: torch.device):
        self.dtypes, self.index, self.device = dtypes, index, device
        numels = [ts[0].numel() for ts in local]
        for ts in local:
            p, m, v = ts
            if not all(t.is_contiguous() for t in ts) or m.dtype != p.dtype or v.dtype != p.dtype:
                raise RuntimeError(f"TritonAdamW needs contiguous parameters and moments in the parameter's "
                                   f"dtype; got {tuple(p.shape)} {p.dtype}, moments {m.dtype}, {v.dtype}")
        addresses = [ts[k].data_ptr() for k in range(3) for ts in local] + [s.data_ptr() for s in steps]
        self.aligned = all(a % 16 == 0 for a in addresses)
        self.blocks = BlockTable(numels, BLOCK, ITERS, device)
        self.n_tensors = len(numels)
        self.ptrs = _to_device(torch.tensor(addresses, dtype=torch.int64), device)
        self.grads = AddressTable(device)

    def set_grads(self, grads: list[torch.Tensor]) -> None:
        self.grads.update(grads, check=self._check_grads)

    def _check_grads(self, grads: list[torch.Tensor]) -> None:
        for g, k in zip(grads, self.blocks.numel_list):
            if not g.is_contiguous() or g.numel() != k:
                raise RuntimeError(f"TritonAdamW needs contiguous gradients shaped like their parameters; "
                                   f"got {tuple(g.shape)} (strides {g.stride()}) for {k} elements")


class AddressTable:
    """A device table of tensors' addresses (int64), sent again only when one of them moved: gradients are
    new tensors every step, but the caching allocator mostly gives them the same addresses."""

    def __init__(self, device: torch.device):
        self.device = device
        self.addresses: list[int] = []
        self.ptrs: torch.Tensor | None = None
        self.aligned = False  # every address a multiple of 16 bytes

    def update(self, tensors: list[torch.Tensor], check=None) -> None:
        """Point the table at `tensors`; `check(tensors)` runs first, only when an address changed."""
        addresses = [t.data_ptr() for t in tensors]
        if addresses != self.addresses:
            if check is not None:
                check(tensors)
            self.addresses = addresses
            self.ptrs = _to_device(torch.tensor(addresses, dtype=torch.int64), self.device)
            self.aligned = all(a % 16 == 0 for a in addresses)


class BlockTable:
    """Device tables of one launch over several tensors, one program per `block * iters` elements of one
    tensor: `numels` (int64), `owner` (the tensor of each program, int32), `starts` (its first element,
    int64); `n_blocks` programs. Keeps the block and iters it was laid out for, which the launch must pass."""

    def __init__(self, numels: list[int], block: int, iters: int, device: torch.device):
        self.numel_list, self.block, self.iters = numels, block, iters
        span = block * iters
        counts = [triton.cdiv(k, span) for k in numels]
        owner = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), torch.tensor(counts))
        starts = torch.cat([torch.arange(c, dtype=torch.int64) * span for c in counts])
        self.n_blocks = len(owner)
        self.numels = _to_device(torch.tensor(numels, dtype=torch.int64), device)
        self.owner, self.starts = _to_device(owner, device), _to_device(starts, device)


class _Plan:
    """A group's launches, valid while the same parameters have gradients and the same state tensors."""

    def __init__(self, params: list, states: list[dict]):
        self.params = params
        self.key = [id(st["exp_avg"]) for st in states]
        by_dtype: dict[tuple, list[int]] = {}
        self.empty_steps = []  # an FSDP2 rank may hold nothing of a tensor: only its step count moves
        for i, (p, st) in enumerate(zip(params, states)):
            if _local(p).numel() == 0:
                self.empty_steps.append(st["step"])
            else:
                by_dtype.setdefault((_local(p).dtype, _local(p.grad).dtype), []).append(i)
        self.launches = [
            _Launch(dtypes, index, [(_local(params[i]), _local(states[i]["exp_avg"]),
                                     _local(states[i]["exp_avg_sq"])) for i in index],
                    [states[i]["step"] for i in index], _local(params[index[0]]).device)
            for dtypes, index in by_dtype.items()]

    def matches(self, params: list, states: list[dict]) -> bool:
        return (len(params) == len(self.params) and all(a is b for a, b in zip(params, self.params))
                and self.key == [id(st["exp_avg"]) for st in states])


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    # pinned and non-blocking: a pageable copy would wait for the stream (the step before) to drain; the
    # pinned block is not reused before its copy has run (the caching host allocator records the copy)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


_IMPL_FLAGS = ("foreach", "fused", "capturable")


def keep_implementation_on_load(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """`load_state_dict` copies the saved groups' `foreach`/`fused`/`capturable` over this optimizer's; put
    this optimizer's back, so a checkpoint from torch's fused AdamW resumes in TritonAdamW and the other way
    round, each keeping its own kernel (the state itself is the same)."""
    flags = [{k: g[k] for k in _IMPL_FLAGS if k in g} for g in optimizer.param_groups]

    def restore(opt: torch.optim.Optimizer) -> None:
        for group, own in zip(opt.param_groups, flags):
            group.update(own)

    optimizer.register_load_state_dict_post_hook(restore)
    return optimizer


class TritonAdamW(torch.optim.AdamW):
    """torch.optim.AdamW (its param groups, state and state_dict) with the update done by `_adamw_kernel`.

    `capturable=True` only makes `load_state_dict` put step counts on the parameters' device, where the
    kernel reads them; no CUDA graph is involved."""

    takes_grad_scale = True  # the trainer folds the clip into `grad_scale` and NaN skips into `found_inf`

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, weight_decay: float):
        if triton is None:
            raise RuntimeError("TritonAdamW needs the triton package (optim.fused='on'/'off' use torch's AdamW)")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False,
                         fused=False, capturable=True)
        self.grad_scale: torch.Tensor | None = None
        self.found_inf: torch.Tensor | None = None
        self._plans: dict[int, _Plan] = {}
        keep_implementation_on_load(self)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("TritonAdamW.step takes no closure")
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if not state:
                    if p.grad.is_sparse:
                        raise RuntimeError("TritonAdamW does not take sparse gradients")
                    state["step"] = torch.zeros((), dtype=torch.float32, device=_local(p).device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            plan = self._plans.get(gi)
            if plan is None or not plan.matches(params, states):
                plan = self._plans[gi] = _Plan(params, states)
            self._run(group, plan)
        return None

    def _run(self, group: dict, plan: _Plan) -> None:
        scale, inf = self.grad_scale, self.found_inf
        if plan.empty_steps and inf is None:
            torch._foreach_add_(plan.empty_steps, 1.0)
        elif plan.empty_steps:
            torch._foreach_add_(plan.empty_steps, [1.0 - inf.float()] * len(plan.empty_steps))
        beta1, beta2 = group["betas"]
        for launch in plan.launches:
            launch.set_grads([_local(plan.params[i].grad) for i in launch.index])
            # step counts += 1 (0 on a skipped step) by a kernel: torch's foreach add of a device scalar syncs
            blocks = launch.blocks
            _count_kernel[(triton.cdiv(launch.n_tensors, 1024),)](
                launch.ptrs, launch.n_tensors, inf if inf is not None else blocks.numels, HAS_INF=inf is not None,
                BLOCK=1024)
            _adamw_kernel[(blocks.n_blocks,)](
                launch.ptrs, launch.grads.ptrs, blocks.numels, blocks.owner, blocks.starts, launch.n_tensors,
                scale if scale is not None else blocks.numels, inf if inf is not None else blocks.numels,
                float(group["lr"]), float(group["weight_decay"]), float(beta1), float(beta2),
                math.log2(beta1) if beta1 > 0 else -math.inf, math.log2(beta2) if beta2 > 0 else -math.inf,
                float(group["eps"]), P=_CODES[launch.dtypes[0]], G=_CODES[launch.dtypes[1]],
                HAS_SCALE=scale is not None, HAS_INF=inf is not None,
                ALIGNED=launch.aligned and launch.grads.aligned, BLOCK=blocks.block, ITERS=blocks.iters,
                PREFETCH=PREFETCH, num_warps=NUM_WARPS)


if triton is not None:

    @triton.jit
    def _count_kernel(ptrs, n_tensors, found_inf_ptr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr):
        t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = t < n_tensors
        step_ptrs = tl.load(ptrs + 3 * n_tensors + t, mask=inside, other=0).to(tl.pointer_type(tl.float32))
        add = 1.0
        if HAS_INF:
            add = 1.0 - tl.load(found_inf_ptr).to(tl.float32)
        tl.store(step_ptrs, tl.load(step_ptrs, mask=inside) + add, mask=inside)

    @triton.jit
    def _as_ptr(address, CODE: tl.constexpr):
        if CODE == 0:
            return address.to(tl.pointer_type(tl.float32))
        elif CODE == 1:
            return address.to(tl.pointer_type(tl.bfloat16))
        else:
            return address.to(tl.pointer_type(tl.float16))

    @triton.jit
    def _load4(p_ptr, g_ptr, m_ptr, v_ptr, offs, inside, MASKED: tl.constexpr):
        """Parameter, gradient and moments at `offs`, in their storage dtypes (packed: fewer registers while
        a prefetched block waits). Evict-first loads and streaming stores measured no faster
        (results/2026-11-23-1xh100-kernels-adamw-blocks.md, `h` rows)."""
        if MASKED:
            return (tl.load(p_ptr + offs, mask=inside, other=0.0), tl.load(g_ptr + offs, mask=inside, other=0.0),
                    tl.load(m_ptr + offs, mask=inside, other=0.0), tl.load(v_ptr + offs, mask=inside, other=0.0))
        return tl.load(p_ptr + offs), tl.load(g_ptr + offs), tl.load(m_ptr + offs), tl.load(v_ptr + offs)

    @triton.jit
    def _update_store(p_ptr, m_ptr, v_ptr, offs, inside, p, g, m, v, scale, step_size, decay, beta1, beta2,
                      bias2_sqrt, eps):
        """torch's AdamW update in fp32 from loaded values, stored rounded to the storage dtypes (`inside`:
        the store mask, None for a whole block)."""
        g = g.to(tl.float32) / scale
        m = m.to(tl.float32)
        m = m + (1.0 - beta1) * (g - m)
        v = beta2 * v.to(tl.float32) + (1.0 - beta2) * g * g
        p = p.to(tl.float32) * decay - step_size * m / (tl.sqrt(v) / bias2_sqrt + eps)
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=inside)
        tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=inside)
        tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _adamw_kernel(ptrs, grad_ptrs, numels, owner, starts, n_tensors, grad_scale_ptr, found_inf_ptr, lr,
                      weight_decay, beta1, beta2, log2_beta1, log2_beta2, eps, P: tl.constexpr, G: tl.constexpr,
                      HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
                      ITERS: tl.constexpr, PREFETCH: tl.constexpr):
        pid = tl.program_id(0)
        t = tl.load(owner + pid)
        # blocks start at multiples of BLOCK and tensors at 16-byte aligned addresses (checked on the host):
        # said explicitly, and whole blocks load without a mask, so the loads are vectorized (addresses and
        # sizes read from a table are otherwise of unknown alignment)
        start = tl.multiple_of(tl.load(starts + pid), BLOCK * ITERS)
        n = tl.load(numels + t)
        if HAS_INF:  # a non-finite step: read and write nothing
            n = tl.where(tl.load(found_inf_ptr) == 0, n, 0)
        p_ptr = _as_ptr(tl.load(ptrs + t), P)
        g_ptr = _as_ptr(tl.load(grad_ptrs + t), G)
        m_ptr = _as_ptr(tl.load(ptrs + n_tensors + t), P)
        v_ptr = _as_ptr(tl.load(ptrs + 2 * n_tensors + t), P)
        if ALIGNED:
            p_ptr, g_ptr = tl.multiple_of(p_ptr, 16), tl.multiple_of(g_ptr, 16)
            m_ptr, v_ptr = tl.multiple_of(m_ptr, 16), tl.multiple_of(v_ptr, 16)
        step = tl.load(_as_ptr(tl.load(ptrs + 3 * n_tensors + t), 0))
        scale = 1.0
        if HAS_SCALE:
            scale = tl.load(grad_scale_ptr).to(tl.float32)
        step_size = lr / (1.0 - tl.exp2(step * log2_beta1))
        bias2_sqrt = tl.sqrt(1.0 - tl.exp2(step * log2_beta2))
        decay = 1.0 - lr * weight_decay
        if start + BLOCK * ITERS <= n:  # a whole span: unmasked, vectorized
            offs = tl.max_contiguous(tl.multiple_of(start + tl.arange(0, BLOCK), BLOCK), BLOCK)
            if PREFETCH:  # block i+1's loads are issued before block i's update and stores
                p, g, m, v = _load4(p_ptr, g_ptr, m_ptr, v_ptr, offs, None, MASKED=False)
                for i in tl.static_range(ITERS):
                    if i + 1 < ITERS:
                        nxt = tl.max_contiguous(tl.multiple_of(offs + BLOCK, BLOCK), BLOCK)
                        np_, ng, nm, nv = _load4(p_ptr, g_ptr, m_ptr, v_ptr, nxt, None, MASKED=False)
                    _update_store(p_ptr, m_ptr, v_ptr, offs, None, p, g, m, v, scale, step_size, decay, beta1,
                                  beta2, bias2_sqrt, eps)
                    if i + 1 < ITERS:
                        offs, p, g, m, v = nxt, np_, ng, nm, nv
            else:
                for i in tl.static_range(ITERS):
                    offs = tl.max_contiguous(tl.multiple_of(start + i * BLOCK + tl.arange(0, BLOCK), BLOCK), BLOCK)
                    p, g, m, v = _load4(p_ptr, g_ptr, m_ptr, v_ptr, offs, None, MASKED=False)
                    _update_store(p_ptr, m_ptr, v_ptr, offs, None, p, g, m, v, scale, step_size, decay, beta1,
                                  beta2, bias2_sqrt, eps)
        elif start < n:
            for i in tl.static_range(ITERS):
                offs = start + i * BLOCK + tl.arange(0, BLOCK)
                inside = offs < n
                p, g, m, v = _load4(p_ptr, g_ptr, m_ptr, v_ptr, offs, inside, MASKED=True)
                _update_store(p_ptr, m_ptr, v_ptr, offs, inside, p, g, m, v, scale, step_size, decay, beta1,
                              beta2, bias2_sqrt, eps)
