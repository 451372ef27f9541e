"""The CUDA graphs of a batch's pass (graphs.py, a GPU's default): where a pass cannot be
recorded, the runs go on as without them; where there is no CUDA device, they cannot be asked
for. (Replaying a recorded pass needs a GPU: benchmarks/gpu.py measures it and compares its
losses.)"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from graph_stand_in import install
from impasto_server.engine import Engine, EngineError, Result, StyleOptions


def test_cuda_graphs_need_a_cuda_device(engine):
    with pytest.raises(EngineError) as info:
        Engine(device="cpu", cuda_graphs=True)
    assert info.value.field == "cuda_graphs"
    assert engine.cuda_graphs is False  # the default: on only where the device is a GPU


def _batch_results(engine, content, jobs) -> list[np.ndarray]:
    """The images of ``jobs`` ((style, options) pairs) run as one batch."""
    prepared = [engine.prepare(content, [s], o) for s, o in jobs]
    out = [e for _, e in engine.run_batch(prepared) if isinstance(e, Result)]
    assert len(out) == len(jobs)
    return [r.image for r in out]


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_a_pass_that_cannot_be_recorded_runs_as_before(
    engine, content, style, red_style, monkeypatch, caplog, optimizer
):
    options = StyleOptions.from_preset(
        "default", size=40, iterations=6, num_scales=2, optimizer=optimizer, seed=4
    )
    jobs = [(style, options), (red_style, options.replace(style_weight=50.0))]
    plain = _batch_results(engine, content, jobs)
    monkeypatch.setattr(engine, "cuda_graphs", True)  # on the CPU: recording fails
    with caplog.at_level(logging.WARNING, logger="impasto_server.engine"):
        tried = _batch_results(engine, content, jobs)
    for a, b in zip(plain, tried, strict=True):
        assert np.array_equal(a, b)
    # tried once, in the first stage's third pass, then never again in this batch
    failures = [r for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


@pytest.mark.parametrize("capturable", [False, True])
def test_l_bfgs_steps_recorded_with_the_pass_are_taken_once(
    content, style, red_style, monkeypatch, capturable
):
    engine = Engine(device="cpu", capturable_lbfgs=capturable)
    options = StyleOptions.from_preset(
        "default", size=40, iterations=8, num_scales=2, seed=4, precision="float32"
    )
    jobs = [(style, options), (red_style, options.replace(style_weight=50.0))]
    plain = _batch_results(engine, content, jobs)
    stand_in = install(monkeypatch)  # each "replay" runs the pass and the steps it holds
    monkeypatch.setattr(engine, "cuda_graphs", True)
    replayed = _batch_results(engine, content, jobs)
    for a, b in zip(plain, replayed, strict=True):
        assert np.array_equal(a, b)
    # every pass from each stage's third on was a "replay"; with the steps where capturable
    assert stand_in.replays == 8 - 2 * 2
    assert stand_in.with_steps == (stand_in.replays if capturable else 0)


def test_recordings_keep_the_allocators_cache_where_asked(content, style, monkeypatch):
    engine = Engine(device="cpu")
    assert engine.graphs_keep_cache is False  # torch's way by default
    options = StyleOptions.from_preset("default", size=40, iterations=4, num_scales=1, seed=4)
    stand_in = install(monkeypatch)
    monkeypatch.setattr(engine, "cuda_graphs", True)
    _batch_results(engine, content, [(style, options)])
    monkeypatch.setattr(engine, "graphs_keep_cache", True)
    _batch_results(engine, content, [(style, options)])
    assert stand_in.keep_cache == [False, True]  # each batch's graphs as the engine says


@pytest.mark.parametrize("keep_cache", [False, True])
def test_a_capture_is_torchs_less_its_emptying_of_the_pinned_host_cache(monkeypatch, keep_cache):
    """What the GPU would be asked, in order (a GPU run measures the rest: gpu.py): torch's
    own steps as a capture begins, less the emptying of the pinned host memory cache (the
    batch's uploads' blocks), and less the device cache's where the cache is kept."""
    import contextlib

    from impasto_server.engine import graphs

    calls = []

    @contextlib.contextmanager
    def on_stream(stream):
        calls.append(f"on {stream}")
        try:
            yield
        finally:
            calls.append(f"off {stream}")

    class Graph:
        def capture_begin(self, capture_error_mode):
            calls.append(f"begin {capture_error_mode}")

        def capture_end(self):
            calls.append("end")

    monkeypatch.setattr(graphs.torch.cuda, "synchronize", lambda: calls.append("synchronize"))
    monkeypatch.setattr(graphs.torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(graphs.torch.cuda, "stream", on_stream)
    if hasattr(graphs.torch._C, "_host_emptyCache"):
        monkeypatch.setattr(
            graphs.torch._C, "_host_emptyCache", lambda: calls.append("host_emptyCache")
        )
    emptied = [] if keep_cache else ["empty_cache"]
    with graphs._capture(Graph(), "side", keep_cache):
        calls.append("pass")
    assert calls == ["synchronize", *emptied, "on side", "begin thread_local", "pass", "end",
                     "off side"]  # fmt: skip
    calls.clear()
    with pytest.raises(ValueError), graphs._capture(Graph(), "side", keep_cache):
        raise ValueError("a pass that fails")
    assert calls == ["synchronize", *emptied, "on side", "begin thread_local", "end", "off side"]
