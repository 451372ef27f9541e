"""Adam runs whose iterations overlap the host's reports with the device's next pass
(Engine.overlap): the same events and results as one report after each pass."""

from __future__ import annotations

import numpy as np
import pytest
from impasto_server.engine import Cancelled, Engine, EngineError, Progress, Result, StyleOptions


@pytest.fixture(scope="module")
def engines(engine: Engine):
    """The session's engine (overlap on, the default) and a flag to turn it off."""
    assert engine.overlap

    class Switch:
        def __init__(self) -> None:
            self.engine = engine

        def run(self, overlap: bool, jobs, **prepare) -> dict[int, list]:
            engine.overlap = overlap
            try:
                prepared = [engine.prepare(c, [s], o, **prepare) for c, s, o in jobs]
                out: dict[int, list] = {i: [] for i in range(len(jobs))}
                for i, event in engine.run_batch(prepared):
                    out[i].append(event)
                return out
            finally:
                engine.overlap = True

    return Switch()


def _progress(events) -> list[tuple[int, int, dict[str, float]]]:
    return [(e.iteration, e.scale_index, e.losses) for e in events if isinstance(e, Progress)]


def test_overlapped_adam_runs_give_the_same_events_and_results(
    engines, content, style, red_style, monkeypatch
):
    from impasto_server.engine import transfer

    reads = []  # each overlapped pass's read: its runs

    class Read(transfer._Read):
        def __init__(self, terms) -> None:
            reads.append(terms.shape[0])
            super().__init__(terms)

    monkeypatch.setattr(transfer, "_Read", Read)
    base = StyleOptions.from_preset(
        "default", size=40, iterations=9, num_scales=2, optimizer="adam", seed=4,
        precision="float32",
    )  # fmt: skip
    for jobs in (
        [(content, style, base)],
        [(content, style, base), (content, red_style, base.replace(learning_rate=3.0, seed=7))],
    ):
        reads.clear()
        overlapped = engines.run(True, jobs, preview_every=4, preview_size=16)
        # every iteration but each stage's first (whose step finds the gradient's scale)
        assert reads == [len(jobs)] * (9 - 2)
        stepwise = engines.run(False, jobs, preview_every=4, preview_size=16)
        assert len(reads) == 9 - 2
        for i in range(len(jobs)):
            a, b = overlapped[i], stepwise[i]
            assert isinstance(a[-1], Result) and isinstance(b[-1], Result)
            assert [p[0] for p in _progress(a)] == list(range(1, 10))
            # Each iteration's losses, the previews (the image after that iteration's step,
            # not the next one's) and the result: equal to the bit.
            assert _progress(a) == _progress(b)
            previews = [
                (e.iteration, e.preview) for e in a if getattr(e, "preview", None) is not None
            ]
            assert [n for n, _ in previews] == [4, 8]
            for (n, image), other in zip(
                previews, [e.preview for e in b if getattr(e, "preview", None) is not None],
                strict=True,
            ):  # fmt: skip
                assert np.array_equal(image, other), n
            assert np.array_equal(a[-1].image, b[-1].image)
            assert a[-1].losses == b[-1].losses


def test_a_run_that_diverges_while_overlapped_ends_alone_with_the_error(engines, content, style):
    base = StyleOptions(size=32, iterations=8, num_scales=1, optimizer="adam", seed=2,
                        precision="float32")  # fmt: skip
    # The first step moves every pixel by about 1e30: the second pass's Grams overflow, and
    # that pass's losses are read after the next pass was launched.
    jobs = [(content, style, base), (content, style, base.replace(learning_rate=1e30))]
    for overlap in (True, False):
        events = engines.run(overlap, jobs)
        assert isinstance(events[1][-1], EngineError) and "diverged" in str(events[1][-1])
        assert [e.iteration for e in events[1][:-1]] == [1]
        assert isinstance(events[0][-1], Result) and events[0][-1].iterations == 8
    ran = {o: engines.run(o, jobs[:1])[0][-1].image for o in (True, False)}
    assert np.array_equal(ran[True], ran[False])


def test_a_run_stopped_while_overlapped_is_cancelled_and_the_other_goes_on(engines, content, style):
    base = StyleOptions(size=32, iterations=8, num_scales=1, optimizer="adam", seed=2)
    seen = {"n": 0}
    prepared = [
        engines.engine.prepare(content, [style], base),
        engines.engine.prepare(content, [style], base, should_stop=lambda: seen["n"] >= 3),
    ]
    events: dict[int, list] = {0: [], 1: []}
    for i, event in engines.engine.run_batch(prepared):
        events[i].append(event)
        if i == 0 and isinstance(event, Progress):
            seen["n"] = event.iteration
    assert isinstance(events[1][-1], Cancelled)
    assert [e.iteration for e in events[1][:-1]] == list(range(1, len(events[1])))
    assert 3 <= len(events[1]) - 1 <= 4
    assert isinstance(events[0][-1], Result) and events[0][-1].iterations == 8
