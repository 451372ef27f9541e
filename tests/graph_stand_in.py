"""A stand-in for the engine's CUDA graphs (graphs.PassGraphs) where there is no GPU: each
"replay" runs what a recording would hold (the pass, then the steps it was given), so the
engine's and the benchmarks' bookkeeping around graphs runs on the CPU; a step taken twice, or
not at all, changes the result."""

from __future__ import annotations

from typing import Any


class EagerReplays:
    replays = 0  # passes "replayed", on this class or a subclass
    with_steps = 0  # of them, those that held the optimiser steps
    keep_cache: list[bool] = []  # what each batch's graphs were told  # noqa: RUF012

    def __init__(self, device: Any, keep_cache: bool = False) -> None:
        type(self).keep_cache.append(keep_cache)

    def release(self) -> None:
        pass

    def run(self, stages, evaluate, steps=None):
        type(self).replays += 1
        terms = evaluate(stages)
        if steps is not None:
            type(self).with_steps += 1
            steps(stages)
        return terms


def install(monkeypatch: Any, stand_in: type[EagerReplays] = EagerReplays) -> type[EagerReplays]:
    """``stand_in`` in place of PassGraphs for the test, its counts at 0."""
    from impasto_server.engine import transfer

    monkeypatch.setattr(transfer, "PassGraphs", stand_in)
    monkeypatch.setattr(stand_in, "replays", 0)
    monkeypatch.setattr(stand_in, "with_steps", 0)
    monkeypatch.setattr(stand_in, "keep_cache", [])
    return stand_in
