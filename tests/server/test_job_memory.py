"""Jobs are checked against the memory one job may use before they are queued."""

from __future__ import annotations

import grpc
import pytest
from impasto.client import Client, ImpastoError, Result, Started
from impasto_server.app import parse_args

F32 = {"precision": "float32"}


def test_a_job_too_large_for_memory_is_refused_and_the_size_it_names_fits(
    make_server, tiny_content, tiny_style
):
    # 24 MiB of simulated device memory: a 128 px float32 job needs about 40 MiB.
    server = make_server(simulated_memory_mb=24)
    with Client(server.address) as client:
        assert client.server_info().limits["job_memory_bytes"] == 24 << 20
        job = client.stylize(tiny_content, [tiny_style], size=128, iterations=3, **F32)
        with pytest.raises(ImpastoError) as caught:
            job.result()
        error = caught.value
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == "TOO_LARGE"
        assert job.job_id is None  # refused before it was queued: no event at all
        assert [field for field, _ in error.field_violations] == ["options.size"]
        assert str(error).count("the job needs about") == 1  # the field's text is the message's
        assert "MiB of memory" in error.message and "24 MiB for one job" in error.message
        needed = int(error.metadata["needed_bytes"])
        assert int(error.metadata["available_bytes"]) == 24 << 20 < needed < 80 << 20
        height = int(error.metadata["largest_height"])
        width = int(error.metadata["largest_width"])
        assert 40 <= height < 107 and 48 <= width < 128  # tiny_content is 40x48
        assert f"about {height}x{width}" in error.message
        # The size it names does fit: under the same simulated memory, that job runs to its end.
        events = list(client.stylize(tiny_content, [tiny_style], size=width, iterations=3, **F32))
        started = next(e for e in events if isinstance(e, Started))
        assert started.width == width and abs(started.height - height) <= 1
        assert isinstance(events[-1], Result) and events[-1].iterations == 3
    samples = server.metrics.registry.get_sample_value(
        "impasto_rejected_requests_total", {"reason": "too_large"}
    )
    assert samples == 1


def test_a_job_that_fits_only_with_fewer_lbfgs_pairs_runs_with_fewer(
    make_server, shared_engine, tiny_content, tiny_style, caplog
):
    from impasto_server.engine import StyleOptions

    job = {"size": 96, "iterations": 40, "num_scales": 1, **F32}
    options = StyleOptions.from_preset("default", seed=0, **job)
    full = shared_engine.plan_memory(tiny_content, [tiny_style], options, capacity=256 << 20)
    assert full.pairs == (39,)
    # Simulated memory for the job with about 15 pairs (each 24 bytes a pixel).
    memory = full.needed - 24 * 24 * 80 * 96
    server = make_server(simulated_memory_mb=memory / (1 << 20))
    with caplog.at_level("INFO", logger="impasto_server.jobs"), Client(server.address) as client:
        result = client.stylize(tiny_content, [tiny_style], seed=0, **job).result()
    assert result.iterations == 40  # ran to its end inside the simulated memory
    (line,) = [r.getMessage() for r in caplog.records if "L-BFGS pairs" in r.getMessage()]
    kept = int(line.split("keeps [")[1].split("]")[0])
    assert 5 <= kept < 39 and "(of [39])" in line


def test_job_memory_can_be_set_or_turned_off(make_server, tiny_content, tiny_style):
    unchecked = make_server(job_memory_mb=0)
    with Client(unchecked.address) as client:
        assert "job_memory_bytes" not in client.server_info().limits  # 0: not checked
    # An operator's limit below what the job needs refuses it, whatever the device has.
    strict = make_server(job_memory_mb=1)
    with Client(strict.address) as client:
        with pytest.raises(ImpastoError) as caught:
            client.stylize(tiny_content, [tiny_style], size=32, iterations=2).result()
        assert caught.value.reason == "TOO_LARGE"
        assert "largest_height" not in caught.value.metadata  # no size fits 1 MiB
        assert "no size fits" in caught.value.message
    assert parse_args(["--job-memory-mb", "512"]).job_memory_mb == 512
    with pytest.raises(SystemExit):
        parse_args(["--job-memory-mb", "-1"])


def test_a_cpu_server_reports_the_memory_it_has(make_server):
    import psutil

    server = make_server()
    with Client(server.address) as client:
        available = client.server_info().limits["job_memory_bytes"]
    assert 0 < available < psutil.virtual_memory().total
