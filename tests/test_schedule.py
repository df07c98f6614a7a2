import math

import pytest

from cptrain.config import ScheduleConfig
from cptrain.schedule import lr_multiplier


def wsd(**kw):
    return ScheduleConfig(name="wsd", **kw)


def test_wsd_linear_values():
    cfg = wsd(warmup_steps=10, decay_steps=20, decay_shape="linear", min_lr_ratio=0.1)
    total = 100
    assert lr_multiplier(0, cfg, total) == pytest.approx(0.1)  # warmup (step+1)/10
    assert lr_multiplier(4, cfg, total) == pytest.approx(0.5)
    assert lr_multiplier(9, cfg, total) == pytest.approx(1.0)
    assert lr_multiplier(10, cfg, total) == 1.0  # stable
    assert lr_multiplier(79, cfg, total) == 1.0  # last stable step
    assert lr_multiplier(80, cfg, total) == pytest.approx(0.1 + 0.9 * (1 - 1 / 20))
    assert lr_multiplier(89, cfg, total) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(99, cfg, total) == pytest.approx(0.1)  # ends at min_lr_ratio


def test_wsd_decay_shapes_and_fraction():
    total = 50  # decay_fraction 0.2 -> the last 10 steps
    half = 44  # progress (44 - 40 + 1) / 10 = 0.5
    lin = lr_multiplier(half, wsd(decay_fraction=0.2, decay_shape="linear"), total)
    cos = lr_multiplier(half, wsd(decay_fraction=0.2, decay_shape="cosine"), total)
    sqrt = lr_multiplier(half, wsd(decay_fraction=0.2, decay_shape="1-sqrt"), total)
    assert lin == pytest.approx(0.5)
    assert cos == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert sqrt == pytest.approx(1 - math.sqrt(0.5))
    assert lr_multiplier(39, wsd(decay_fraction=0.2), total) == 1.0


def test_decay_branch_from_stable_checkpoint():
    """The schedule is a function of (step, total): a stable-phase step resumed with a new total decays
    at the new end, and the steps already taken had the same LR under both totals."""
    cfg = wsd(warmup_steps=5, decay_steps=10, decay_shape="linear")
    for step in range(0, 60):
        assert lr_multiplier(step, cfg, 100) == lr_multiplier(step, cfg, 200)
    assert lr_multiplier(95, cfg, 100) < 1.0 and lr_multiplier(95, cfg, 200) == 1.0


def test_cosine_and_constant():
    cfg = ScheduleConfig(name="cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert lr_multiplier(0, cfg, 101) == pytest.approx(1.0)
    assert lr_multiplier(50, cfg, 101) == pytest.approx(0.5)
    assert lr_multiplier(7, ScheduleConfig(name="constant"), 10) == 1.0


@pytest.mark.parametrize("total", [2, 3, 4])
@pytest.mark.parametrize("warmup", [0, 1])
def test_short_wsd_runs_end_at_min_lr_ratio(total, warmup):
    """decay_fraction 0.2 of 2 steps rounds to 0: the decay still takes the last step, after any warmup
    that ends before it (a warmup lasting the whole run is warned about by the config instead)."""
    cfg = wsd(warmup_steps=warmup, min_lr_ratio=0.1)
    if warmup < total:
        assert lr_multiplier(total - 1, cfg, total) == pytest.approx(0.1)
    assert cfg.wsd_decay_steps(total) == 1
    if total - 1 > warmup:  # a step between warmup and the last one stays at the peak
        assert lr_multiplier(total - 2, cfg, total) == 1.0


def test_no_wsd_decay_when_asked_for_none():
    assert lr_multiplier(1, wsd(decay_fraction=0.0), 2) == 1.0
    assert lr_multiplier(1, wsd(decay_steps=0), 2) == 1.0


def test_short_run_through_the_config_ends_at_min_lr_ratio():
    """What the trainer reads: the loaded config of a 2-step run with the default decay_fraction."""
    from cptrain.config import load_config

    cfg = load_config(None, ["model.preset=debug", "model.init=random", "model.tokenizer=tok",
                             "train.steps=2", "schedule.min_lr_ratio=0.1"])
    assert [lr_multiplier(s, cfg.schedule, 2) for s in range(2)] == [1.0, pytest.approx(0.1)]


def test_a_one_step_wsd_run_trains_at_the_peak():
    """A one-step run is a smoke test: its only step at min_lr_ratio (0 by default) would train nothing."""
    cfg = wsd(min_lr_ratio=0.0)
    assert cfg.wsd_decay_steps(1) == 0
    assert lr_multiplier(0, cfg, 1) == 1.0


@pytest.mark.parametrize("total, warmup", [(2, 1), (3, 2), (2, 0)])
def test_cosine_runs_end_at_min_lr_ratio_one_step_after_warmup_too(total, warmup):
    """With a single step after the warmup, that step was the cosine's start (the peak); it is the last step."""
    cfg = ScheduleConfig(name="cosine", warmup_steps=warmup, min_lr_ratio=0.1)
    assert lr_multiplier(total - 1, cfg, total) == pytest.approx(0.1)
    assert lr_multiplier(0, ScheduleConfig(name="cosine", min_lr_ratio=0.1), 1) == 1.0
