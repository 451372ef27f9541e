"""The CUDA graphs of a batch's pass (graphs.py, a GPU's default): where a pass cannot be
recorded, the runs go on as without them; where there is no CUDA device, they cannot be asked
for. (Replaying a recorded pass needs a GPU: benchmarks/gpu.py measures it and compares its
losses.)"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from impasto_server.engine import Engine, EngineError, Result, StyleOptions


def test_cuda_graphs_need_a_cuda_device(engine):
    with pytest.raises(EngineError) as info:
        Engine(device="cpu", cuda_graphs=True)
    assert info.value.field == "cuda_graphs"
    assert engine.cuda_graphs is False  # the default: on only where the device is a GPU


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_a_pass_that_cannot_be_recorded_runs_as_before(
    engine, content, style, red_style, monkeypatch, caplog, optimizer
):
    options = StyleOptions.from_preset(
        "default", size=40, iterations=6, num_scales=2, optimizer=optimizer, seed=4
    )
    jobs = [(style, options), (red_style, options.replace(style_weight=50.0))]

    def results() -> list[np.ndarray]:
        prepared = [engine.prepare(content, [s], o) for s, o in jobs]
        out = [e for _, e in engine.run_batch(prepared) if isinstance(e, Result)]
        assert len(out) == 2
        return [r.image for r in out]

    plain = results()
    monkeypatch.setattr(engine, "cuda_graphs", True)  # on the CPU: recording fails
    with caplog.at_level(logging.WARNING, logger="impasto_server.engine"):
        tried = results()
    for a, b in zip(plain, tried, strict=True):
        assert np.array_equal(a, b)
    # tried once, in the first stage's third pass, then never again in this batch
    failures = [r for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
