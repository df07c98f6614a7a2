"""The trainer: build everything from a Config, then the step loop.

Loss is averaged per token over the whole global batch (all ranks, all micro-batches), not as a mean
of per-micro-batch means, so results do not depend on how a batch is split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cptrain import checkpoint, launch
from cptrain.config import Config
from cptrain.configtools import to_dict
from cptrain.looptools import Lookahead, StopFlag
from cptrain.models.decoder import IGNORE_INDEX, Decoder, varlen_max_bucket
from cptrain.models.presets import ModelArgs
from cptrain.ops.adamw import TritonAdamW
from cptrain.ops.attention import HYBRID_MIN_DOC_TOKENS, long_document_spans
from cptrain.ops.grad_norm import GradNorm
from cptrain.ops.varlen import cu_seqlens_from_documents
from cptrain.optim import apply_freeze, build_optimizer, folds_clip_and_skip, optimizer_name
from cptrain.schedule import build_scheduler, lr_multiplier


@dataclass
class PendingStep:
    """A launched optimizer step whose results are still on their way (`Trainer.finish_step` reads them).

    `stats`: loss (fp64 mean per label token over the global batch), gradient norm, finite flag (loss and
    norm), global label tokens and the stop vote (ranks asking to stop), copied without blocking into a
    pinned host buffer at the end of the step. `begin`/`end`: CUDA events around the step; `end` fires when
    that copy has landed, so waiting on it waits for this step only, not for a step launched after it."""

    stats: torch.Tensor
    lr: float
    step: int
    host_tail: tuple = ()  # the stats that are host numbers already (one rank: tokens, stop vote)
    begin: torch.cuda.Event | None = None
    end: torch.cuda.Event | None = None


class Trainer:
    """Owns model, optimizer, scheduler and the step counter; data comes in as lists of micro-batches."""

    def __init__(self, cfg: Config, model, device: torch.device):
        self.cfg, self.model, self.device = cfg, model, device
        if cfg.optim.freeze:
            apply_freeze(model, cfg.optim.freeze)
        self.optimizer = build_optimizer(model, cfg.optim, device.type)
        # with the Triton optimizer, the norm of plain-tensor gradients is Triton's too (one kernel launch);
        # DTensor parameters (FSDP2, TP) keep torch's norm, whose placements say what to reduce over ranks
        plain = not any(hasattr(p, "placements") for p in model.parameters())
        self._grad_norm = GradNorm() if plain and isinstance(self.optimizer, TritonAdamW) else None
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.train.steps)
        self.step = 0
        self.tokens_seen = 0
        self.skipped_steps = 0
        self.nonfinite_steps = 0  # steps of this launch whose loss or gradient norm was NaN/inf
        self.nonfinite_in_a_row = 0  # of them, those since the last finite step

    def train_step(self, micro_batches: list[dict]) -> dict:
        """One optimizer step over this rank's micro-batches; returns global loss and token counts."""
        return self.finish_step(self.launch_step(micro_batches))

    def launch_step(self, micro_batches: list[dict], stop_requested: bool = False) -> PendingStep:
        """Queue one optimizer step on the device and return without waiting for it.

        Nothing here reads a device value on the host (with the fused optimizer), so the host is free to
        fetch the next batch, or launch the next step, while the device works; `finish_step` then waits for
        this step's results. `stop_requested`: this rank's vote to stop, summed over ranks with the token
        count (one collective), read back as `finish_step(...)["stop"]`, the same on every rank.
        """
        model, dev = self.model, self.device
        world = dist.get_world_size()
        cuda = dev.type == "cuda"
        begin = torch.cuda.Event(enable_timing=True) if cuda else None
        if cuda:
            begin.record()
        # labels are host tensors from the loader: counting them costs no device round trip
        local_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro_batches)
        if world > 1:
            counts = torch.tensor([float(local_tokens), float(stop_requested)], dtype=torch.float64)
            # pinned, so the copy does not wait for the previous step still running on the stream
            counts = (counts.pin_memory() if cuda else counts).to(dev, non_blocking=True)
            dist.all_reduce(counts)
            global_tokens, stop_votes = counts[0].clamp(min=1.0), counts[1]
            # FSDP averages gradients over ranks; undo that so the result is sum(loss) / global_tokens
            scale = (world / global_tokens).float()
        else:
            global_tokens = float(max(local_tokens, 1))
            stop_votes = float(stop_requested)
            scale = 1.0 / global_tokens
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        varlen = model_uses_varlen(model, dev)
        for i, b in enumerate(micro_batches):
            extra = {}
            if varlen:  # documents as sequences: their offsets from the host batch, no mask, no device sync
                cu = cu_seqlens_from_documents(b["document_ids"]) if "document_ids" in b else None
                if cu is not None:
                    extra = {"cu_seqlens": cu.pin_memory() if cuda else cu,
                             "max_seqlen": varlen_max_bucket(cu)}
                b = {k: v for k, v in b.items() if k != "document_ids"}
                causal_only = False
            else:
                # rows that are each one document need only the causal mask: SDPA's fused kernel, no ids sent
                causal_only = self.cfg.model.attention == "auto" and single_document_rows(b)
                # long documents of packed rows: their own causal SDPA calls (hybrid attention), found on the host
                extra = {"long_spans": self._long_spans(b) if not causal_only else None}
            # pinned first: a copy from pageable memory waits for the stream to drain, which would stall this
            # launch until the step before (still running) is done
            b = {k: (v.pin_memory() if cuda else v).to(dev, non_blocking=True) for k, v in b.items()
                 if not (causal_only and k == "document_ids")}
            if hasattr(model, "set_requires_gradient_sync"):  # FSDP2; without it (one rank) nothing to sync
                model.set_requires_gradient_sync(i == len(micro_batches) - 1)
            loss = model(b["input_ids"], b["position_ids"], b.get("document_ids"), b["labels"], **extra)
            (loss * scale).backward()
            loss_sum += loss.detach().double()
        if world > 1:
            dist.all_reduce(loss_sum)
        grad_norm = self._clip_gradients()
        loss_mean = loss_sum / global_tokens
        finite = torch.isfinite(loss_mean) & torch.isfinite(grad_norm)
        lr = self.cfg.optim.lr * lr_multiplier(self.step, self.cfg.schedule, self.cfg.train.steps)
        self._optimizer_step(finite)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        # only device values are copied back (a host scalar sent to the device would be a pageable copy,
        # which waits for the stream to drain); one rank's token count and stop vote are host numbers
        on_device = [loss_mean, grad_norm, finite] + ([global_tokens, stop_votes] if world > 1 else [])
        stats = torch.stack([x.to(torch.float64) for x in on_device])
        host_tail = () if world > 1 else (global_tokens, stop_votes)
        if not cuda:
            return PendingStep(stats, lr, self.step, host_tail)
        host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
        host.copy_(stats, non_blocking=True)
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        return PendingStep(host, lr, self.step, host_tail, begin, end)

    def _long_spans(self, batch: dict) -> list | None:
        """The host batch's long documents for the hybrid attention path (None: that path is off)."""
        cfg = self.cfg.model
        on = cfg.attention == "hybrid" or (cfg.attention == "auto" and cfg.long_doc_min_tokens > 0)
        if not on or "document_ids" not in batch:
            return None
        return long_document_spans(batch["document_ids"], cfg.long_doc_min_tokens or HYBRID_MIN_DOC_TOKENS)

    def _clip_gradients(self) -> torch.Tensor:
        """The global gradient norm; gradients are clipped to `train.max_grad_norm` (0: no clipping).

        With the fused optimizer the clip is folded into its kernel: `grad_scale` (the divisor GradScaler
        uses) is set to max(1, norm / max_norm), which saves a read and a write of every gradient.
        """
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self._grad_norm is not None and grads:
            norm = self._grad_norm(grads)
        else:
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        max_norm = self.cfg.train.max_grad_norm
        if max_norm > 0:
            # the same coefficient as torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6), at most 1
            divisor = torch.clamp((norm.float() + 1e-6) / max_norm, min=1.0)
            if folds_clip_and_skip(self.optimizer):
                self.optimizer.grad_scale = divisor
            elif grads:
                torch._foreach_div_(grads, divisor.to(grads[0].dtype))
        return norm

    def _optimizer_step(self, finite: torch.Tensor) -> None:
        if not self.cfg.train.skip_nan_steps:
            self.optimizer.step()
        elif folds_clip_and_skip(self.optimizer):
            # the fused kernel leaves parameters, moments and step counts alone when found_inf is 1 (the flag
            # GradScaler uses), so a NaN step is skipped on the device, with no host sync
            self.optimizer.found_inf = (~finite).float()
            self.optimizer.step()
        elif bool(finite):  # other implementations: decide on the host
            self.optimizer.step()

    def finish_step(self, pending: PendingStep) -> dict:
        """Wait for a launched step (only for it: steps launched later keep running); its global loss,
        gradient norm, lr, token count and the ranks' stop vote as Python values."""
        if pending.end is not None:
            pending.end.synchronize()
        loss, grad_norm, finite, tokens, stop = pending.stats.tolist() + list(pending.host_tail)
        finite, tokens = bool(finite), int(tokens)
        # skipped: the optimizer left the weights alone; with train.skip_nan_steps = false a non-finite step is
        # applied (the weights take its NaN/inf), so it is not skipped, only non-finite
        skipped = not finite and self.cfg.train.skip_nan_steps
        if not finite:
            self.nonfinite_steps += 1
        self.nonfinite_in_a_row = 0 if finite else self.nonfinite_in_a_row + 1
        if skipped:
            self.skipped_steps += 1
        self.tokens_seen += tokens
        return {"loss": loss, "grad_norm": grad_norm, "lr": pending.lr, "tokens": tokens, "skipped": skipped,
                "nonfinite": not finite, "tokens_seen": self.tokens_seen, "stop": stop > 0}


class Diverged(RuntimeError):
    """The loss or gradient norm stayed NaN/inf for train.max_nonfinite_steps steps in a row: the run stops."""


def diverged_message(step: int, in_a_row: int, skip: bool, checkpoints: list[int]) -> str:
    """Why the run stops and what it leaves: the weights' state and the checkpoint a relaunch would resume."""
    first = step - in_a_row + 1
    if skip:
        weights = f"the updates were skipped, so the weights are those of step {first - 1}"
    else:
        weights = f"the updates were applied (train.skip_nan_steps = false): the weights hold NaN/inf since step {first}"
    bad = [s for s in checkpoints if not skip and s >= first]
    good = [s for s in checkpoints if s not in bad]
    where = f"the newest usable checkpoint is step {good[-1]}" if good else "no usable checkpoint was saved"
    if bad:  # a relaunch would resume from the newest of them
        where += (" (saved after the divergence, with NaN/inf weights: "
                  f"{', '.join(f'checkpoints/step-{s}' for s in bad)}; move them out before relaunching)")
    return (f"steps {first}-{step} ({in_a_row} in a row) had a non-finite loss or gradient norm, so the run has "
            f"diverged and stops (train.max_nonfinite_steps = {in_a_row}; 0 never stops); {weights}; {where}. "
            "A lower optim.lr or a longer schedule.warmup_steps usually helps")


@dataclass
class InFlight:
    """A launched step the run loop has not read back yet, with what its log line needs."""

    pending: PendingStep
    micro: list[dict]
    t0: float  # host clock when its iteration began
    t_take: float  # host seconds waiting for its batches
    t_launched: float  # host clock when launch_step returned
    fetch_s: float  # host seconds fetching the next step's batches after launching it
    overlapped: bool  # launched while the step before was still running


def repeated_sources(data_report: dict) -> dict[str, str]:
    """Sources of this rank's stream that ran out of training documents and started over (a corpus smaller than
    the run), each with a phrase for the console: `'name' read N times over`."""
    return {name: f"{name!r} read {int(stats['epochs_started'])} times over"
            for name, stats in data_report.get("sources", {}).items() if stats.get("epochs_started", 0) > 1}


def warn_nonfinite(log, step: int, out: dict, count: int, skip: bool) -> None:
    """A console line for a step whose loss or gradient norm is NaN/inf, whatever logging.every_steps: the 1st,
    2nd, 4th, 8th... of a launch (a run that stays non-finite does not flood the console)."""
    if count & (count - 1):
        return
    what = ("the update was skipped (train.skip_nan_steps)" if skip else
            "the update was applied (train.skip_nan_steps = false): the weights now hold NaN/inf")
    log.info(f"warning: step {step}: non-finite loss or gradient norm (loss {out['loss']:.4g}, grad norm "
             f"{out['grad_norm']:.4g}); {what}; {count} such step(s) in this launch so far")


def model_uses_varlen(model, device: torch.device) -> bool:
    """The decoder (FSDP2 shards it in place: still a Decoder) runs its attention on document offsets."""
    return hasattr(model, "uses_varlen") and model.uses_varlen(device)


def single_document_rows(batch: dict) -> bool:
    """Every row of this host batch is one document with no padding, so the document mask is just causal."""
    docs = batch.get("document_ids")
    return docs is not None and not docs.is_cuda and bool((docs == docs[:, :1]).all() and (docs[:, 0] >= 0).all())


def restore_schedule(trainer: Trainer, step: int) -> None:
    """Put the LambdaLR at `step`: the schedule is a pure function of the step."""
    trainer.scheduler.last_epoch = step
    for group, base in zip(trainer.optimizer.param_groups, trainer.scheduler.base_lrs):
        group["lr"] = base * lr_multiplier(step, trainer.cfg.schedule, trainer.cfg.train.steps)


def check_settings(cfg: Config, args: ModelArgs, device: torch.device, is_main: bool) -> None:
    """Settings the optimizer and the metrics logger would refuse only once built, checked before the data is
    read and the run folder made: a typo costs seconds, not a tokenized corpus. The freeze patterns are matched
    against a meta-device model of this shape (no memory, same parameter names)."""
    from cptrain.metrics import check_loggers
    from cptrain.models.hf import export_family
    from cptrain.optim import adamw_kernel, check_freeze

    adamw_kernel(cfg.optim.fused, device.type)
    if cfg.train.export_hf:  # a shape no HF architecture expresses would otherwise fail at the end of the run
        export_family(args)
    if cfg.optim.freeze:
        with torch.device("meta"):
            check_freeze(Decoder(args), cfg.optim.freeze)
    if is_main:  # the only rank that logs: the others never import the logger packages
        check_loggers(cfg.logging.tensorboard, cfg.logging.wandb_project)


def run(cfg: Config) -> dict:
    """Train as configured; works as a plain process, under torchrun and under srun."""
    from cptrain.parallel.dims import init_distributed, shutdown

    env = init_distributed(cfg.train.device)
    try:
        return _run(cfg, env)
    finally:
        shutdown()


def _run(cfg: Config, env) -> dict:
    from cptrain.data import build_eval_batches, run_train_loader
    from cptrain.evaluate import generate, heldout_loss
    from cptrain.metrics import MetricsLogger
    from cptrain.models.build import build_model, model_args
    from cptrain.models.hf import load_tokenizer
    from cptrain.parallel.dims import build_mesh
    from cptrain.runfolder import RunFolder, step_metrics

    folder = RunFolder(Path(cfg.train.run_dir), env.is_main)
    # every check comes before anything in the run folder is written: a launch that fails leaves it as it was
    resume_from = checkpoint.find_resume(folder.path, cfg.checkpoint.resume)
    if resume_from is not None:
        done = launch.already_done(resume_from, folder.path, cfg)
        if done is not None:
            return done
    mesh = build_mesh(cfg.parallel, env)
    dp = env.world_size
    accum = cfg.train.micro_batches_per_step(dp)
    tokenizer = load_tokenizer(cfg.model.tokenizer_source)
    args = model_args(cfg.model)
    launch.check_vocab(args, tokenizer)
    check_settings(cfg, args, env.device, env.is_main)
    if resume_from is not None:
        folder.check_fits(resume_from, args)
    load_rank_state, data_note = launch.rank_state_plan(resume_from, cfg, env.world_size)
    data_kw = dict(seq_len=cfg.train.seq_len, micro_batch_size=cfg.train.micro_batch_size)
    # first_step: where the stream's mixture stages stand when it starts over (a fresh run, or a resume that
    # restarts the data); a restored data position carries its own
    first_step = checkpoint.saved_step(resume_from) if resume_from is not None else 0
    loader = run_train_loader(cfg, tokenizer, dp_rank=env.rank, dp_size=dp, first_step=first_step)
    rank_state = checkpoint.saved_rank_state(resume_from) if load_rank_state else None
    if rank_state is not None:
        # the saved data position now, through the loader's own check: one these settings cannot continue
        # (another train.micro_batch_size) is refused in seconds, before the model or the run folder is touched
        loader.load_state_dict(rank_state["data"])
    eval_batches = build_eval_batches(cfg.data, tokenizer, max_batches=cfg.eval.max_batches, **data_kw)
    torch.manual_seed(cfg.train.seed)  # here: whatever the data loaders drew, every rank builds the same init
    model = build_model(cfg.model, cfg.precision, mesh, env.device, seq_len=cfg.train.seq_len,
                        micro_batch_size=cfg.train.micro_batch_size, fsdp=cfg.parallel.fsdp,
                        reshard_after_forward=cfg.parallel.reshard_after_forward)
    trainer = Trainer(cfg, model, env.device)
    # the folder only now: whatever building the model and optimizer refuses leaves no half-made folder behind
    folder.create(fresh=resume_from is None)
    log = MetricsLogger(folder.path, cfg.train.steps, env.is_main, cfg.logging.tensorboard,
                        cfg.logging.wandb_project, config=to_dict(cfg))

    if resume_from is not None:
        if data_note:
            log.info(data_note)
        optimizer = trainer.optimizer if cfg.checkpoint.load_optimizer else None
        state, _ = checkpoint.load(resume_from, model, optimizer, load_rank_state=False)
        if rank_state is not None:  # the RNG after the model's init drew from it; the loader has its position
            checkpoint.set_rng_state(rank_state["rng"])
        trainer.step, trainer.tokens_seen = state["step"], state.get("tokens_seen", 0)
        restore_schedule(trainer, trainer.step)
        log.info(f"resumed from {resume_from} at step {trainer.step}")
        asked = cfg.checkpoint.resume
        own = (folder.path / "checkpoints").resolve()
        if (asked not in ("auto", "never") and Path(asked).resolve().parent == own
                and Path(asked).resolve() != resume_from.resolve()):
            # a rewind to one of the run's own steps (after a loss spike) lands on its newest step instead; a
            # branch from another run folder, requeued, going on from its own newest step is meant
            log.info(f"warning: checkpoint.resume = {asked!r} was not used: a path is only the starting point of a "
                     f"run folder without checkpoints of its own, and this run's newest is {resume_from.name}. To "
                     "rewind this run, move its later step folders out of checkpoints/ (or branch into a new "
                     "train.run_dir)")
    changed = folder.write_metadata(cfg, args, tokenizer, resumed_at=trainer.step if resume_from is not None else None)
    if changed:
        log.info(f"note: resumed with settings that differ from the run's config.resolved.toml: {changed}")

    if cfg.schedule.warmup_steps > cfg.train.steps:
        log.info(f"warning: schedule.warmup_steps = {cfg.schedule.warmup_steps} is more than train.steps = "
                 f"{cfg.train.steps}: the learning rate never reaches optim.lr = {cfg.optim.lr:g}")
    if cfg.train.seq_len > args.max_seq_len:
        log.info(f"warning: train.seq_len = {cfg.train.seq_len} is longer than the model's {args.max_seq_len} "
                 "positions (max_position_embeddings): this run extends its context with RoPE as it is unless "
                 "model.overrides sets rope_theta or rope_scaling")
    if not eval_batches:
        log.info("no held-out data (data.eval_fraction = 0 or too few documents): held-out loss not measured")

    def evaluate(tag: str) -> dict | None:
        if not eval_batches:
            return None
        result = heldout_loss(model, eval_batches, env.device)
        sample = generate(model, tokenizer, cfg.eval.sample_prompt, cfg.eval.sample_tokens, env.device)
        folder.write_sample(tag, sample)
        log.info(f"[eval {tag}] held-out loss {result['loss']:.4f} (ppl {result['perplexity']:.2f}, "
                 f"{result['tokens']} tokens)")
        log.log(trainer.step, {f"eval/{k}": v for k, v in result.items()})
        return {**result, "step": trainer.step}  # a resumed run's "before" is at its resume step

    attention_path = getattr(model, "attention_path", lambda d: "?")(env.device)
    optimizer_kind = optimizer_name(trainer.optimizer)
    log.info(f"attention: {attention_path}; optimizer: {optimizer_kind}")
    summary = {"attention": attention_path, "optimizer": optimizer_kind,
               "before": evaluate(f"step-{trainer.step}-before")}
    stop = StopFlag()
    feed = Lookahead(loader, accum)
    every_ckpt, every_eval = cfg.checkpoint.every_steps, cfg.eval.every_steps

    def at_rest(step: int) -> bool:
        """Step `step`'s end needs the model idle before the next step is launched: eval, checkpoint, the
        stop step or the last step."""
        return (step >= cfg.train.steps or step == cfg.train.stop_at_step
                or bool(every_ckpt and step % every_ckpt == 0) or bool(every_eval and step % every_eval == 0))

    interval = [0.0, 0]  # loss x label tokens and label tokens of the steps since the last metrics line

    def report(f: InFlight, prev_end: torch.cuda.Event | None) -> dict:
        out = trainer.finish_step(f.pending)
        interval[0] += out["loss"] * out["tokens"]
        interval[1] += out["tokens"]
        # time per step on CUDA (device events): from the end of the step before when this one was queued
        # behind it (the device never waited in between), else from this step's own start plus the wait for
        # its batches. On CPU the launch itself computes the step: its host time.
        if f.pending.end is not None:
            start_ev = prev_end if prev_end is not None else f.pending.begin
            dt = start_ev.elapsed_time(f.pending.end) / 1000.0 + (0.0 if prev_end is not None else f.t_take)
        else:
            dt = f.t_launched - f.t0
        t_data = f.t_take + max(0.0, f.fetch_s - dt)  # the fetch runs while the device works; only overrun waits
        if f.pending.step % cfg.logging.every_steps == 0 or f.pending.step == cfg.train.steps:
            values = step_metrics(out, f.micro, dt, t_data, dp, args, env.device)
            # HF Trainer's logged loss: the mean per label token since the last line (one step's is noisy)
            values["loss_mean"] = interval[0] / max(1, interval[1])
            interval[:] = [0.0, 0]
            log.log(f.pending.step, values)
            log.progress(f.pending.step, values)
        if out["nonfinite"]:
            warn_nonfinite(log, f.pending.step, out, trainer.nonfinite_steps, cfg.train.skip_nan_steps)
        cap = cfg.train.max_nonfinite_steps
        if cap and trainer.nonfinite_in_a_row >= cap:
            # every rank reads the same global loss and norm, so all stop at this step; nothing is saved: with
            # skip_nan_steps the newest checkpoint already holds these weights' state, without it they are NaN
            log.close()
            raise Diverged(diverged_message(f.pending.step, trainer.nonfinite_in_a_row, cfg.train.skip_nan_steps,
                                            [int(p.name.rsplit("-", 1)[1]) for p in
                                             checkpoint.committed_steps(folder.path / "checkpoints")]))
        return out

    started = time.perf_counter()
    inflight: InFlight | None = None
    stopping = False
    saved_at = None  # the step of this launch's last checkpoint
    warned_repeats: set[str] = set()  # sources already said to repeat
    prev_end = None
    while inflight is not None or (trainer.step < cfg.train.steps and not stopping):
        launched = None
        # the next step is queued before the running one is read back, so the device never drains between
        # steps; not past a step that needs the model at rest, nor once a stop is agreed
        if trainer.step < cfg.train.steps and not stopping and (inflight is None or not at_rest(inflight.pending.step)):
            t0 = time.perf_counter()
            micro = feed.take()  # fetched during the previous step; only the first step waits here
            t_take = time.perf_counter() - t0
            pending = trainer.launch_step(micro, stop_requested=stop.requested)
            t_launched = time.perf_counter()
            if trainer.step < cfg.train.steps:
                feed.fetch()  # host work overlapping the device's
            launched = InFlight(pending, micro, t0, t_take, t_launched, time.perf_counter() - t_launched,
                                inflight is not None)
        if inflight is None:
            inflight = launched
            continue
        out = report(inflight, prev_end if inflight.overlapped else None)
        prev_end = inflight.pending.end
        step = inflight.pending.step
        stopping = stopping or out["stop"] or step == cfg.train.stop_at_step
        inflight = launched
        if inflight is not None:
            continue  # the next step was launched: nothing may touch the model before it is read back
        if every_eval and step % every_eval == 0 and step < cfg.train.steps and not stopping:
            evaluate(f"step-{step}")
        if stopping or (every_ckpt and step % every_ckpt == 0 and step < cfg.train.steps):
            folder.save_checkpoint(trainer, feed, cfg.checkpoint.keep_latest_k)
            saved_at = step
            repeats = {n: t for n, t in repeated_sources(feed.report()).items() if n not in warned_repeats}
            warned_repeats.update(repeats)  # at rest: early word of a small corpus, once per source
            if repeats:
                log.info(f"warning: at step {step} the training data repeats: {', '.join(repeats.values())} so far (sources "
                         "smaller than the run start over; report/data.json has the counts)")
            if stopping and step < cfg.train.steps:
                log.info(f"stop requested: checkpoint saved at step {trainer.step}, exiting")
                return {"stopped_at": trainer.step}
            if stopping:  # agreed on the last step: the run is complete and ends as one (eval, report, export);
                # the checkpoint is saved first all the same, so a requeued job finds the run complete
                log.info(f"stop requested on the last step: checkpoint saved at step {step}; finishing the run")
    train_seconds = time.perf_counter() - started
    summary["after"] = evaluate(f"step-{trainer.step}-after")
    if cfg.checkpoint.save_final and saved_at != trainer.step:
        folder.save_checkpoint(trainer, feed, cfg.checkpoint.keep_latest_k)
    if cfg.train.export_hf:
        folder.export(model, args, tokenizer)
    summary.update(steps=trainer.step, train_seconds=round(train_seconds, 1), skipped_steps=trainer.skipped_steps,
                   nonfinite_steps=trainer.nonfinite_steps, tokens_seen=trainer.tokens_seen, data_report=feed.report())
    repeats = repeated_sources(summary["data_report"] or {})
    if repeats:
        log.info(f"warning: the training data repeated: {', '.join(repeats.values())} (epochs of this run's stream on this "
                 "rank; more data, fewer train.steps or a lower weight avoids it; report/data.json has the counts)")
    if trainer.nonfinite_steps:
        what = ("skipped: the weights are those of the last finite step" if cfg.train.skip_nan_steps else
                "applied (train.skip_nan_steps = false): the weights and checkpoints since hold NaN/inf")
        log.info(f"warning: {trainer.nonfinite_steps} step(s) of this launch had a non-finite loss or gradient "
                 f"norm and were {what}; see 'nonfinite' in metrics.jsonl (a lower optim.lr or warmup may help)")
    folder.write_summary(summary)
    if summary["before"] is not None:
        log.info(f"held-out loss {summary['before']['loss']:.4f} -> {summary['after']['loss']:.4f} "
                 f"in {train_seconds:.0f}s of training; run folder {folder.path}")
    else:
        log.info(f"trained {trainer.step} steps in {train_seconds:.0f}s; run folder {folder.path}")
    log.close()
    return summary
