"""The memory plan: estimates against counted peaks, fewer L-BFGS pairs where the full history
would not fit, refusal where nothing fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from impasto_server.engine import Cancelled, Result, StyleOptions
from impasto_server.engine.memory import MARGIN, Footprint, InsufficientMemory
from impasto_server.engine.memory_budget import MemoryBudget


def _run(engine, content, style, options, plan, limit=1 << 40, **kwargs):
    """(peak bytes counted, last event) of a run under a simulated memory of ``limit``."""
    budget = MemoryBudget(limit)
    with budget:
        run = engine.prepare(content, [style], options, memory=plan, **kwargs)
        events = [event for _, event in engine.run_batch([run])]
    return budget.peak, events[-1]


def _peak(*args, **kwargs) -> int:
    peak, last = _run(*args, **kwargs)
    assert isinstance(last, Result), last
    return peak


ADAM_BF16 = {"optimizer": "adam", "pooling": "average", "style_scale": 1.5, "precision": "bfloat16"}


@pytest.mark.parametrize(
    "options",
    [
        StyleOptions(size=160, iterations=24, num_scales=2, precision="float32", seed=1),
        StyleOptions(size=144, iterations=6, seed=1, **ADAM_BF16),
    ],
    ids=["lbfgs-float32-2-stages", "adam-bfloat16-style-scale"],
)
def test_the_estimate_covers_the_measured_peak_closely(engine, content, style, options):
    if options.precision not in engine.supported_precisions:
        pytest.skip(f"{options.precision} is not supported on this CPU")
    # A capacity small enough that the plan measures the job instead of passing it at once.
    plan = engine.plan_memory(content, [style], options, capacity=256 << 20)
    assert plan.needed is not None and plan.capacity == 256 << 20 and not plan.reduced
    peak = _peak(engine, content, style, options, plan)
    assert peak <= plan.needed <= 1.25 * peak, (plan.needed, peak)


def test_lbfgs_keeps_fewer_pairs_when_its_history_would_not_fit(engine, content, style):
    options = StyleOptions(size=128, iterations=40, num_scales=1, precision="float32", seed=2)
    full = engine.plan_memory(content, [style], options, capacity=256 << 20)
    assert full.pairs == (39,) and not full.reduced
    # Room for the pass and about ten pairs (each pair is 24 bytes a pixel: 384 KiB here).
    capacity = int(full.needed - 30 * 24 * 128 * 128 * MARGIN)
    plan = engine.plan_memory(content, [style], options, capacity=capacity)
    assert plan.reduced and 5 <= plan.pairs[0] < 39 and plan.needed <= capacity
    # The job runs to its end inside that memory, with its history filled...
    peak = _peak(engine, content, style, options, plan, limit=capacity)
    assert peak <= capacity
    # ...where the full history would not have fitted.
    _, last = _run(engine, content, style, options, full, limit=capacity)
    assert isinstance(last, torch.OutOfMemoryError)


def test_a_job_that_cannot_fit_is_refused_and_the_size_it_names_fits(engine, content, style):
    options = StyleOptions(size=128, iterations=4, num_scales=1, optimizer="adam", seed=3,
                           precision="float32")  # fmt: skip
    measured = engine.plan_memory(content, [style], options, capacity=256 << 20).needed
    capacity = measured // 2
    with pytest.raises(InsufficientMemory) as caught:
        engine.plan_memory(content, [style], options, capacity=capacity)
    error = caught.value
    assert error.needed == measured and error.capacity == capacity
    height, width = error.largest
    assert height == width and 64 < height < 128  # the content is square
    # The size it names passes the check and runs to its end inside that memory.
    smaller = options.replace(size=width)
    plan = engine.plan_memory(content, [style], smaller, capacity=capacity)
    assert _peak(engine, content, style, smaller, plan, limit=capacity) <= capacity


def test_small_jobs_and_unchecked_engines_skip_the_measurement(engine, content, style):
    options = StyleOptions(size=64, iterations=12, num_scales=2)
    plan = engine.plan_memory(content, [style], options)  # gigabytes free, 64 px
    assert plan.needed is None and plan.capacity == engine.job_memory_bytes > 0
    assert plan.pairs == tuple(n - 1 for n in engine.prepare(content, [style], options).per_stage)
    assert engine.plan_memory(content, [style], options, capacity=0).capacity is None
    assert engine.plan_memory(content, [style], options.replace(optimizer="adam")).pairs is None


def test_the_line_through_two_probes():
    line = Footprint.fit([(200, 2_500), (100, 1_500)])
    assert (line.fixed, line.per_pixel) == (500, 10)
    assert line.stage(1_000, pairs=0) == pytest.approx(MARGIN * 10_500, abs=1)
    assert line.stage(1_000, pairs=2) == pytest.approx(MARGIN * (10_500 + 2 * 24 * 1_000), abs=1)
    # Each pair is 24 bytes a pixel: 24,000 bytes at 1,000 pixels.
    assert line.pairs_that_fit(1_000, capacity=round(MARGIN * (10_500 + 3 * 24_000 + 100))) == 3
    height, width = line.largest(aspect=0.5, pairs=0, capacity=round(MARGIN * 10_500))
    assert height * width <= 1_000 and (height + 1) * (width + 2) > 1_000
    assert line.largest(aspect=1.0, pairs=0, capacity=100) is None
    # A probe pair where the larger image counted less never gives a negative slope.
    assert Footprint.fit([(100, 5_000), (200, 4_000)]).per_pixel == 0


def test_a_mask_costs_memory_and_the_plan_counts_it(engine, content, style):
    labels = np.zeros(content.shape[:2], dtype=np.uint8)
    labels[:, 64:] = 1
    options = StyleOptions(size=128, iterations=3, num_scales=1, precision="float32", seed=4)
    kwargs = {"mask": labels, "region_styles": {1: 0}}
    plain = engine.plan_memory(content, [style], options, capacity=256 << 20)
    masked = engine.plan_memory(content, [style], options, capacity=256 << 20, **kwargs)
    assert masked.needed > plain.needed  # masked Grams keep masked copies of the features
    assert _peak(engine, content, style, options, masked, **kwargs) <= masked.needed


def test_a_probe_that_fails_leaves_the_job_unchecked_and_says_so(
    engine, content, style, monkeypatch, caplog
):
    def broken(*args, **kwargs):
        raise torch.OutOfMemoryError("the device is full right now")

    monkeypatch.setattr(engine, "_probe", broken)
    options = StyleOptions(size=128, iterations=4, num_scales=1)
    with caplog.at_level("WARNING", logger="impasto_server.engine"):
        plan = engine.plan_memory(content, [style], options, capacity=64 << 20)
    assert plan.needed is None and plan.pairs == (3,) and plan.capacity == 64 << 20
    assert "could not measure a job's memory" in caplog.text


def test_naming_the_largest_size_reuses_the_probes_above_their_sizes(engine, content, style):
    options = StyleOptions(size=384, iterations=4, num_scales=1, optimizer="adam", seed=5,
                           precision="float32")  # fmt: skip
    big = np.ascontiguousarray(np.resize(content, (384, 384, 3)))
    needed = engine.plan_memory(big, [style], options, capacity=1 << 30).needed
    calls = []
    probe = engine._probe

    def counted(*args, **kwargs):
        calls.append(args[2:4])  # (height, width)
        return probe(*args, **kwargs)

    engine._probe = counted
    try:
        with pytest.raises(InsufficientMemory) as caught:
            engine.plan_memory(big, [style], options, capacity=needed * 2 // 3)
    finally:
        del engine._probe
    height, width = caught.value.largest
    assert 192 * 192 < height * width < 384 * 384
    assert calls == [(128, 128), (192, 192)]  # measured once, for the job and its candidates


def test_a_probe_past_the_capacity_is_the_refusal_stopped_there(
    engine, content, style, monkeypatch
):
    """Many regions: the probe alone needs several times what one job may use, so the job
    cannot fit; the probe stops there (it went on to its end, however large)."""
    labels = (np.arange(content.shape[0] * content.shape[1]) % 40).reshape(content.shape[:2])
    regions = {label: 0 for label in range(40)}
    options = StyleOptions(size=128, iterations=3, num_scales=1, precision="float32", seed=4)
    probes = []
    measured = engine._probe

    def probe(*args, **kwargs):
        try:
            return measured(*args, **kwargs)
        finally:
            probes.append(args[2:4])

    monkeypatch.setattr(engine, "_probe", probe)
    with pytest.raises(InsufficientMemory) as info:
        engine.plan_memory(content, [style], options, capacity=4 << 20,
                           mask=labels.astype(np.uint8), region_styles=regions)  # fmt: skip
    assert len(probes) == 1  # the first probe ended it
    assert info.value.capacity == 4 << 20 and info.value.needed > 4 * (4 << 20)
    assert info.value.largest is None


def test_a_probe_stops_when_its_caller_is_gone(engine, content, style):
    labels = np.zeros(content.shape[:2], dtype=np.uint8)
    labels[:, 64:] = 1
    options = StyleOptions(size=128, iterations=3, num_scales=1, precision="float32", seed=4)
    with pytest.raises(Cancelled):
        engine.plan_memory(content, [style], options, capacity=64 << 20, mask=labels,
                           region_styles={1: 0}, should_stop=lambda: True)  # fmt: skip
