"""What the scheduler predicts from what it measures: tool durations and engine step times."""

from __future__ import annotations

import math

import pytest

from serving._estimators import TRACE_PRIOR, DurationDistribution, StepTimeModel, ToolDurationPredictor


def test_prior_matches_the_trace_quantiles() -> None:
    assert TRACE_PRIOR.quantile(0.5) == pytest.approx(0.265, rel=1e-3)
    assert TRACE_PRIOR.quantile(0.9) == pytest.approx(0.447, rel=1e-3)
    assert TRACE_PRIOR.quantile(0.99) == pytest.approx(3.34, rel=1e-3)
    assert TRACE_PRIOR.cdf(0.0) == 0.0 and TRACE_PRIOR.cdf(1e6) == 1.0


def test_cdf_is_monotone_and_quantile_inverts_it() -> None:
    dist = DurationDistribution.from_samples([0.1, 0.2, 0.2, 0.5, 1.0, 3.0])
    xs = [0.01 * 1.2**i for i in range(60)]
    cdfs = [dist.cdf(x) for x in xs]
    assert cdfs == sorted(cdfs) and cdfs[0] == 0.0 and cdfs[-1] == 1.0
    for p in (0.2, 0.5, 0.8):
        assert dist.cdf(dist.quantile(p)) == pytest.approx(p, abs=1e-9)


def test_remaining_is_conditional_on_elapsed_time() -> None:
    dist = DurationDistribution.from_quantiles([(0.0, 0.1), (0.5, 1.0), (1.0, 10.0)])
    assert dist.remaining(0.0, 1.0) == pytest.approx(0.5)
    # Half already done by 1 s: of the rest, the share done by 10 s is all of it.
    assert dist.remaining(1.0, 9.0) == pytest.approx(1.0)
    assert 0.0 < dist.remaining(1.0, 1.0) < dist.remaining(1.0, 5.0) < 1.0


def test_predictor_cold_start_then_global_then_per_tool() -> None:
    predictor = ToolDurationPredictor(min_samples=5)
    assert predictor.distribution("cat") is TRACE_PRIOR
    # A hint rescales the prior's shape to the predicted median.
    assert predictor.distribution("cat", hint_s=2.0).quantile(0.5) == pytest.approx(2.0, rel=1e-6)
    for _ in range(5):
        predictor.observe("pip", 60.0)
    assert predictor.distribution("cat").quantile(0.5) == pytest.approx(60.0, rel=0.05)  # global now
    for _ in range(5):
        predictor.observe("cat", 0.1)
    assert predictor.distribution("cat").quantile(0.5) == pytest.approx(0.1, rel=0.05)  # its own
    assert predictor.distribution("pip").quantile(0.5) == pytest.approx(60.0, rel=0.05)
    assert predictor.distribution("cat", hint_s=5.0).quantile(0.5) == pytest.approx(0.1, rel=0.05)  # truth wins


def test_predictor_ignores_garbage_and_keeps_a_window() -> None:
    predictor = ToolDurationPredictor(window=4, min_samples=1)
    predictor.observe("t", -1.0)
    predictor.observe("t", math.nan)
    assert predictor.num_observed == 0
    for d in (100.0, 100.0, 100.0, 100.0, 1.0, 1.0, 1.0, 1.0):
        predictor.observe("t", d)
    assert predictor.distribution("t").quantile(0.99) < 2.0  # the 100 s samples aged out
    assert predictor.snapshot()["tools"]["t"]["samples"] == 4


# -- step time model --------------------------------------------------------------------------------


def test_step_time_model_starts_at_the_engine_notes_figures() -> None:
    model = StepTimeModel()
    assert model.prefill_s(2048) == pytest.approx(4.8, rel=0.25)
    assert model.prefill_s(4096) == pytest.approx(13.3, rel=0.25)
    assert model.prefill_s(0) == 0.0
    lengths = [1, 32, 256, 1024, 4096, 16384]
    times = [model.prefill_s(n) for n in lengths]
    assert times == sorted(times) and times[0] >= 0


def test_step_time_model_learns_a_faster_engine() -> None:
    model = StepTimeModel()
    before = model.prefill_s(2048)
    for i in range(400):  # a GPU-like engine: 100x faster prefill
        tokens = 256 * (1 + i % 16)
        model.observe_step(num_prefill_tokens=tokens, num_decode=i % 8, step_s=0.002 + tokens * 0.00002)
    assert model.num_steps == 400
    assert model.prefill_s(2048) < before / 10
    assert model.prefill_s(2048) == pytest.approx(0.002 + 2048 * 0.00002, rel=0.5)
