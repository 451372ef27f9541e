"""benchmarks/gpu.py's largest-square search: the plan's answer first, one real run there, and
real runs below it only after a plan miss. Its branches past the first run happen on a GPU
only (a plan miss), so they are driven here by an engine whose limits are set by the test."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from impasto_server.engine import Cancelled, InsufficientMemory, Progress


class LimitedEngine:
    """Its memory plan accepts sides up to ``accepts``; its runs fit up to ``runs``."""

    device = "cpu"

    def __init__(self, accepts: int, runs: int) -> None:
        self.accepts, self.runs = accepts, runs
        self.ran: list[int] = []

    def plan_memory(self, square, styles, options):
        assert square.shape == (options.size, options.size, 3)
        if options.size > self.accepts:
            raise InsufficientMemory(2 * options.size, options.size, None)
        return SimpleNamespace(pairs=[100], needed=options.size)

    def run(self, square, styles, options, *, should_stop, memory):
        assert memory.needed == options.size  # the plan made for this side
        self.ran.append(options.size)
        if options.size > self.runs:
            raise torch.OutOfMemoryError("out of memory")
        side = options.size
        for iteration in range(1, options.iterations + 1):
            if should_stop():
                raise Cancelled()
            yield Progress(iteration, options.iterations, {}, 0.0, 0.0, 0, 1, side, side)


def search(gpu, engine: LimitedEngine):
    content = np.zeros((40, 60, 3), np.uint8)
    return gpu.largest_square(engine, content, content, 4096, 8192, "float32", step=256)


def test_the_plans_largest_side_is_run_once_when_it_fits(gpu):
    engine = LimitedEngine(accepts=5000, runs=9000)
    side, measured, misses, errors, bad, tried = search(gpu, engine)
    # the plan: 4096 yes, 8192 no, then 6144 no, 5120 no, 4608 yes, 4864 yes (256 from 5120)
    assert (side, bad) == (4864, 5120)
    assert engine.ran == [4864]  # one real run, at the side found
    assert measured == {"pairs": 100, "estimate": 4864, "peak": 0}
    assert misses == [] and errors == []
    assert tried[0].startswith("4096 accepted by the plan (") and tried[0].endswith(" s)")
    assert tried[1].startswith("8192 refused by the plan (")
    assert tried[-1].startswith("4864 ran (") and " s to the first iteration, " in tried[-1]
    assert " s each of the next two, then " in tried[-1]


def test_the_search_reaches_the_engines_limit(gpu):
    engine = LimitedEngine(accepts=10**5, runs=10**5)
    side, _, misses, _, bad, _ = search(gpu, engine)
    assert (side, bad, misses, engine.ran) == (8192, None, [], [8192])


def test_a_plan_miss_is_reported_and_the_real_runs_search_below_it(gpu):
    engine = LimitedEngine(accepts=8192, runs=6000)
    side, measured, misses, _, bad, tried = search(gpu, engine)
    assert misses[0] == 8192 and all(miss > 6000 for miss in misses)  # 8192, then in the bisection
    assert engine.ran[:2] == [8192, 4096]  # the miss, then up from the start
    assert 6000 - 256 < side <= 6000 < bad <= side + 256, (side, bad)
    assert measured["estimate"] == side
    assert "8192 out of memory" in "; ".join(tried)


def test_halving_until_a_real_run_fits(gpu):
    engine = LimitedEngine(accepts=8192, runs=1000)
    side, _, misses, _, bad, _ = search(gpu, engine)
    assert engine.ran[:5] == [8192, 4096, 2048, 1024, 512]
    assert (side, bad) == (768, 1024)
    assert misses == [8192, 4096, 2048, 1024]
