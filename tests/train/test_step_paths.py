"""The fast paths of a training step keep its meaning (CPU, gloo):

- one rank without FSDP2 (fp32 parameters cast where used) == FSDP2 on one rank, in fp32 and in bf16;
- a non-finite step is skipped on the device (fused and Triton AdamW's found_inf) exactly as on the host path;
- a tied embedding's one gradient buffer (fused loss) gives the same training on one rank and on two FSDP2 ranks;
- the lookahead loader checkpoints the position after the batches trained on, not after the one held back.
"""

import torch

from cptrain.config import load_config
from cptrain.looptools import Lookahead
from cptrain.models.build import build_model
from cptrain.parallel.dims import build_mesh, init_distributed
from cptrain.train import Trainer
from tests.dist_utils import run_ranks
from tests.train.test_trainer_equivalence import global_batches, stack, train_losses

TIED = "model.overrides={tie_embeddings=true}"  # like llama3.2-1b: lm_head shares the embedding


def full_state_dict() -> dict:
    from cptrain.models.decoder import Decoder
    from cptrain.models.presets import get_preset

    torch.manual_seed(123)
    model = Decoder(get_preset("debug").replace(tie_embeddings=True))
    model.init_weights()
    return {k: v.clone() for k, v in model.state_dict().items()}


def _trainer(fsdp: str, param_dtype: str, fused: str, sd: dict | None, extra: tuple[str, ...] = ()) -> Trainer:
    env = init_distributed("cpu")
    cfg = load_config(None, ["model.preset=debug", "model.init=random", "model.loss=naive", "model.tokenizer=x",
                             TIED, f"precision.param_dtype={param_dtype}", f"parallel.fsdp={fsdp}",
                             f"optim.fused={fused}", "train.steps=10", "schedule.warmup_steps=1", "optim.lr=1e-2",
                             *extra])
    model = build_model(cfg.model, cfg.precision, build_mesh(cfg.parallel, env), env.device, seq_len=32,
                        micro_batch_size=4, full_state_dict=sd, use_state_dict=sd is not None, fsdp=fsdp)
    return Trainer(cfg, model, env.device)


def tying(fsdp: str, sd: dict | None) -> tuple[bool, int, int]:
    model = _trainer(fsdp, "fp32", "off", sd).model
    params = list(model.parameters())
    return model.lm_head.weight is model.embed_tokens.weight, len(params), sum(p.numel() for p in params)


def test_tied_embeddings_stay_tied():
    """to_empty() unties shared parameters of plain modules: the one-rank path must re-tie them, or lm_head
    trains as a separate matrix (and a pretrained load, which skips lm_head.weight, leaves it garbage)."""
    sd = full_state_dict()
    expected = sum(v.numel() for k, v in sd.items() if k != "lm_head.weight")
    for fsdp in ("auto", "always"):
        for weights in (None, sd):
            tied, n, numel = run_ranks(1, tying, fsdp, weights)[0]
            assert tied and n == len(sd) - 1 and numel == expected, (fsdp, weights is None, tied, n, numel)


def _params(model) -> dict:
    from cptrain.checkpoint import full_model_state_dict

    return {k: v.clone() for k, v in full_model_state_dict(model).items()}  # not views of live parameters


def train(fsdp: str, param_dtype: str, sd: dict) -> tuple[list[float], dict, bool]:
    trainer = _trainer(fsdp, param_dtype, "off", sd)
    sharded = any(hasattr(p, "full_tensor") for p in trainer.model.parameters())
    losses = [trainer.train_step([stack(rows)])["loss"] for rows in global_batches()]
    return losses, _params(trainer.model), sharded


def test_one_rank_without_fsdp_matches_fsdp():
    sd = full_state_dict()
    plain, p_plain, plain_sharded = run_ranks(1, train, "auto", "fp32", sd)[0]
    fsdp, p_fsdp, fsdp_sharded = run_ranks(1, train, "always", "fp32", sd)[0]
    assert not plain_sharded and fsdp_sharded
    assert plain == fsdp  # fp32: the same arithmetic, bitwise
    for k in p_plain:
        assert torch.equal(p_plain[k], p_fsdp[k]), k


def test_one_rank_without_fsdp_matches_fsdp_mixed_precision():
    """bf16 compute, fp32 master weights. The one intended difference is in the embedding's gradient: FSDP2
    hands the model bf16 weights, so the lookup's backward sums repeated tokens' rows, and autograd sums
    them with lm_head's gradient, in bf16 before the fp32 cast; without FSDP both sums are fp32. Adam turns
    that rounding into up to ~lr on a few near-zero-gradient entries, so the bound there is loose."""
    sd = full_state_dict()
    plain, p_plain, _ = run_ranks(1, train, "auto", "bf16", sd)[0]
    fsdp, p_fsdp, _ = run_ranks(1, train, "always", "bf16", sd)[0]
    assert plain[0] == fsdp[0]  # before any update: the same bf16 forward
    for a, b in zip(plain, fsdp):
        assert abs(a - b) <= 1e-4 * abs(b), (plain, fsdp)
    for k in p_plain:
        assert p_plain[k].dtype == torch.float32  # fp32 master weights either way
        diff = (p_plain[k] - p_fsdp[k]).abs()
        assert diff.mean() < 2e-4 and diff.max() < 2e-2, (k, diff.mean(), diff.max())  # lr = 1e-2


def train_bf16_master(fsdp: str, fused: str, sd: dict) -> tuple[list[float], set, set, bool]:
    trainer = _trainer(fsdp, "bf16", fused, sd, ("precision.master_dtype=bf16",))
    tied = trainer.model.lm_head.weight is trainer.model.embed_tokens.weight or fsdp == "always"
    losses = [trainer.train_step([stack(rows)])["loss"] for rows in global_batches()]
    param_dtypes = {p.dtype for p in trainer.model.parameters()}
    state_dtypes = {t.dtype for s in trainer.optimizer.state.values() for k, t in s.items() if k != "step"}
    return losses, param_dtypes, state_dtypes, tied


def test_bf16_master_weights():
    """precision.master_dtype=bf16: parameters, gradients and AdamW moments all bf16 (the HF bf16-model
    setting); the model still trains, stays tied, and the FSDP2 and plain one-rank paths agree."""
    sd = full_state_dict()
    results = {}
    for fsdp, fused in (("auto", "on"), ("auto", "off"), ("always", "on")):
        losses, params, states, tied = run_ranks(1, train_bf16_master, fsdp, fused, sd)[0]
        assert params == {torch.bfloat16} and states == {torch.bfloat16} and tied, (fsdp, params, states)
        assert losses[-1] < losses[0], losses
        results[(fsdp, fused)] = losses
    first = {losses[0] for losses in results.values()}
    assert len(first) == 1  # before any update: the same bf16 forward from the same bf16 weights
    for losses in results.values():
        for a, b in zip(losses, results[("auto", "on")]):
            assert abs(a - b) <= 2e-2 * abs(b), results


def losses_with(attention: str, sd: dict) -> tuple[list[float], int]:
    trainer = _trainer("auto", "fp32", "off", sd, (f"model.attention={attention}", "model.long_doc_min_tokens=8"))
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(len(kwargs["long_spans"] or [])),
                                            with_kwargs=True)
    losses = [trainer.train_step([stack(rows)])["loss"] for rows in global_batches()]
    return losses, sum(seen)


def test_trainer_hands_long_documents_to_hybrid_attention():
    """attention=hybrid (what auto runs for packed rows on CUDA): the trainer finds each batch's long
    documents on the host and the model runs them apart; the losses equal the reference attention's."""
    sd = full_state_dict()
    hybrid, spans = run_ranks(1, losses_with, "hybrid", sd)[0]
    reference, _ = run_ranks(1, losses_with, "reference", sd)[0]
    assert spans > 0
    for a, b in zip(hybrid, reference, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b), (hybrid, reference)


def varlen_losses(attention: str, sd: dict) -> tuple[list[float], list[list[int]]]:
    trainer = _trainer("auto", "fp32", "off", sd, (f"model.attention={attention}",))
    seen = []
    trainer.model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["cu_seqlens"].tolist() if "cu_seqlens" in kwargs else None),
        with_kwargs=True)
    losses = [trainer.train_step([stack(rows)])["loss"] for rows in global_batches()]
    return losses, seen


def test_trainer_hands_document_offsets_to_varlen_attention():
    """attention=varlen (what auto runs on a GPU with FlashAttention 4): the trainer turns each host batch's
    document ids into sequence offsets, sends no ids, and the losses equal the reference attention's."""
    sd = full_state_dict()
    varlen, offsets = run_ranks(1, varlen_losses, "varlen", sd)[0]
    reference, none = run_ranks(1, varlen_losses, "reference", sd)[0]
    batches = [stack(rows) for rows in global_batches()]
    from cptrain.ops.varlen import cu_seqlens_from_documents
    assert offsets == [cu_seqlens_from_documents(b["document_ids"]).tolist() for b in batches]
    assert any(len(o) > 5 for o in offsets) and none == [None] * len(batches)  # packed rows: > 1 doc per row
    for a, b in zip(varlen, reference, strict=True):
        assert abs(a - b) <= 1e-5 * abs(b), (varlen, reference)


def skip_nan(fsdp: str, fused: str, sd: dict) -> tuple[list[dict], bool, int, float]:
    """Step, then a step whose loss is NaN, then another step: the NaN step changes nothing."""
    trainer = _trainer(fsdp, "fp32", fused, sd)
    poison = {"on": False}
    trainer.model.register_forward_hook(lambda m, args, out: out * float("nan") if poison["on"] else out)
    batches = [stack(rows) for rows in global_batches()]
    outs = [trainer.train_step([batches[0]])]
    before = _params(trainer.model)
    steps_before = [s["step"].item() for s in trainer.optimizer.state.values()]
    poison["on"] = True
    outs.append(trainer.train_step([batches[1]]))
    poison["on"] = False
    after = _params(trainer.model)
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    unchanged &= steps_before == [s["step"].item() for s in trainer.optimizer.state.values()]
    outs.append(trainer.train_step([batches[2]]))
    moved = max((after[k] - _params(trainer.model)[k]).abs().max().item() for k in after)
    return outs, unchanged, trainer.skipped_steps, moved


def test_nan_step_is_skipped_on_device_and_host(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # optim.fused=triton: the kernel interpreted in the spawned rank
    sd = full_state_dict()
    for fsdp, fused in (("auto", "on"), ("always", "on"), ("auto", "off"), ("auto", "triton"), ("always", "triton")):
        outs, unchanged, skipped, moved = run_ranks(1, skip_nan, fsdp, fused, sd)[0]
        assert [o["skipped"] for o in outs] == [False, True, False], (fsdp, fused)
        assert unchanged and skipped == 1 and moved > 0, (fsdp, fused, unchanged, skipped, moved)


class _CountingLoader:
    def __init__(self):
        self.handed_out = 0

    def __next__(self):
        self.handed_out += 1
        return {"n": self.handed_out}

    def state_dict(self):
        return {"handed_out": self.handed_out}


def test_lookahead_checkpoints_the_position_trained_on():
    loader = _CountingLoader()
    feed = Lookahead(loader, micro_batches_per_step=2)
    assert [b["n"] for b in feed.take()] == [1, 2]
    assert feed.state_dict() == {"handed_out": 2}
    feed.fetch()  # the next step's batches, fetched while the device runs this one
    assert loader.handed_out == 4 and feed.state_dict() == {"handed_out": 2}
    assert [b["n"] for b in feed.take()] == [3, 4] and feed.state_dict() == {"handed_out": 4}


def single_doc_losses(attention: str, sd: dict) -> list[float]:
    trainer = _trainer("auto", "fp32", "off", sd, (f"model.attention={attention}",))
    losses = []
    for rows in global_batches():
        batch = stack(rows)
        batch["document_ids"] = torch.zeros_like(batch["document_ids"])  # each row one document
        batch["position_ids"] = torch.arange(32).expand(4, 32).clone()
        losses.append(trainer.train_step([batch])["loss"])
    return losses


def test_single_document_rows_train_as_plain_causal():
    """attention=auto drops the mask of rows that are each one document (SDPA's causal kernel); the losses
    equal those of the explicit document mask (attention=sdpa keeps it)."""
    from cptrain.train import single_document_rows

    docs = torch.zeros(2, 8, dtype=torch.int32)
    assert single_document_rows({"document_ids": docs})
    docs[1, 5:] = 1
    assert not single_document_rows({"document_ids": docs})
    assert not single_document_rows({"document_ids": torch.full((1, 8), -1, dtype=torch.int32)})  # padding
    sd = full_state_dict()
    auto, masked = run_ranks(1, single_doc_losses, "auto", sd)[0], run_ranks(1, single_doc_losses, "sdpa", sd)[0]
    assert all(abs(a - b) < 1e-5 for a, b in zip(auto, masked)), (auto, masked)


def stop_votes(sd: dict) -> list[bool]:
    """Rank 1 alone asks to stop at the second step; every rank reads the same agreed votes."""
    trainer = _trainer("always", "fp32", "on", sd)
    rank = torch.distributed.get_rank()
    batches = [stack(rows) for rows in global_batches()]
    pending = [trainer.launch_step([batches[i]], stop_requested=(rank == 1 and i == 1)) for i in range(2)]
    return [trainer.finish_step(p)["stop"] for p in pending]  # two steps in flight, read back in order


def test_a_stop_asked_by_one_rank_is_agreed_by_all():
    sd = full_state_dict()
    assert run_ranks(2, stop_votes, sd) == [[False, True], [False, True]]


def tied_fused_losses(micro_batch_size: int, sd: dict) -> tuple[list[float], dict, list[bool]]:
    """train_losses with a tied embedding and the fused loss, recording (not changing) whether each forward
    took the one-buffer path for the tied gradient (ops/tied_grad.py)."""
    from cptrain.models.decoder import Decoder

    seen, real = [], Decoder._shares_tied_grad
    Decoder._shares_tied_grad = lambda self: seen.append(real(self)) or seen[-1]
    losses, params = train_losses(micro_batch_size, sd, (TIED, "model.loss=fused_chunked"))
    return losses, params, seen


def test_tied_gradient_buffer_one_rank_and_fsdp2():
    sd = full_state_dict()
    one, p_one, seen_one = run_ranks(1, tied_fused_losses, 2, sd)[0]
    two, p_two, seen_two = run_ranks(2, tied_fused_losses, 1, sd)[0]
    assert seen_one and all(seen_one) and seen_two and all(seen_two), (seen_one, seen_two)
    for a, b in zip(one, two):
        assert abs(a - b) < 1e-5, (one, two)
    for k in p_one:
        torch.testing.assert_close(p_one[k], p_two[k], rtol=0, atol=2e-4)  # as test_two_ranks_match_one_rank


def loaded_weights(fsdp: str, extra: tuple[str, ...], sd: dict) -> tuple[dict, list[str]]:
    model = _trainer(fsdp, "fp32", "off", sd, extra).model
    return _params(model), [name for name, _ in model.named_parameters()]


def test_weights_load_into_wrapped_blocks():
    """Pretrained weights (the plain Decoder's names) load into blocks that parallelize wrapped: compiled
    blocks name their parameters `layers.N._orig_mod.*`, which the load once looked up as given and failed
    on (`weights lack 'layers.0._orig_mod.input_layernorm.weight'`), so `model.compile = true` could not
    continue-pretrain a real model. Checked with and without FSDP2 and under activation checkpointing."""
    sd = full_state_dict()
    for fsdp in ("auto", "always"):
        for extra in (("model.compile=true",), ("model.compile=true", "model.activation_checkpointing=full"),
                      ("model.activation_checkpointing=full",)):
            params, names = run_ranks(1, loaded_weights, fsdp, extra, sd)[0]
            if "model.compile=true" in extra:
                assert any("_orig_mod." in n for n in names), names  # the wrapper is really there
            assert set(params) | {"lm_head.weight"} == set(sd), (fsdp, extra, sorted(set(params) ^ set(sd)))
            for k, v in params.items():
                assert torch.equal(v, sd[k]), (fsdp, extra, k)


def checkpoint_round_trip(step_dir: str) -> tuple[bool, bool, int]:
    """Save a compiled-blocks model and its optimizer after one update, load both into a fresh compiled
    model: (weights equal, AdamW moments equal, number of tensors)."""
    from pathlib import Path

    from cptrain import checkpoint

    extra = ("model.compile=true",)
    first = _trainer("auto", "fp32", "off", full_state_dict(), extra)
    for p in first.model.parameters():  # an update without a forward: the compiled graphs are never built
        p.grad = torch.full_like(p, 1e-2)
    first.optimizer.step()
    checkpoint.save(Path(step_dir), first.model, first.optimizer, train_state={"step": 1}, data_state={},
                    keep_latest_k=0)
    second = _trainer("auto", "fp32", "off", None, extra)
    checkpoint.load(Path(step_dir), second.model, second.optimizer)
    a, b = _params(first.model), _params(second.model)
    sa, sb = (opt.state_dict()["state"] for opt in (first.optimizer, second.optimizer))
    moments = len(sa) == len(sb) > 0 and all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), moments, len(a)


def test_checkpoint_round_trip_with_compiled_blocks(tmp_path):
    """Resume under model.compile: DCP's names for compiled blocks and the final norm are the plain ones, so a
    checkpoint restores weights and AdamW state exactly."""
    weights, moments, n = run_ranks(1, checkpoint_round_trip, str(tmp_path / "step-1"))[0]
    assert weights and moments and n == len(full_state_dict()), (weights, moments, n)
