"""benchmarks/held_memory.py at toy sizes: a real server per limit, every client answered."""

from __future__ import annotations

import os
import sys

BENCHMARKS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"
)


def test_a_bound_refuses_what_does_not_fit_and_none_refuses_nothing(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import held_memory

    images = [held_memory.smooth_png(600, seed) for seed in range(2)]  # 2 MiB decoded a job
    unbounded = held_memory.one_limit(0, 3, images)
    assert (unbounded["taken"], unbounded["refused"]) == (3, 0)
    bounded = held_memory.one_limit(1, 3, images)  # 1 MiB: the first job alone fits
    assert (bounded["taken"], bounded["refused"]) == (1, 2)
    assert bounded["codes"] == ["RESOURCE_EXHAUSTED"]
    assert 0 < bounded["baseline"] <= bounded["resident"] <= bounded["peak"]
    sys.modules.pop("held_memory", None)
