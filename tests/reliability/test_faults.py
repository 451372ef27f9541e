"""Faults: a job that runs out of (simulated) device memory, a client that stops reading, and a
server killed (SIGKILL) or stopped (SIGTERM) mid-job."""

from __future__ import annotations

import os
import signal
import time

import grpc
import numpy as np
import pytest
from impasto.client import Client, ImpastoError, Progress, Queued, Result, Started
from impasto.local import LocalServer
from job_watch import LONG, SHORT, Watcher, wait_until


def test_out_of_memory_fails_that_job_alone(make_server, tiny_content, tiny_style):
    # 24 MiB holds a 32 px job (about 12 MiB of tensors) but not a 128 px one (about 40 MiB),
    # in float32 (bfloat16 would add autocast's copies of the weights). With jobs checked
    # against it (the default), the 128 px job would be refused before it ran
    # (tests/server/test_job_memory.py); unchecked, it runs into the limit.
    server = make_server(max_running=2, simulated_memory_mb=24, job_memory_mb=0)
    f32 = {"precision": "float32"}
    with Client(server.address) as big_client, Client(server.address) as small_client:
        big = Watcher(big_client.stylize(tiny_content, [tiny_style], size=128, iterations=3, **f32))
        small = Watcher(small_client.stylize(tiny_content, [tiny_style], **SHORT, **f32))
        assert big.done.wait(60) and small.done.wait(60)
        assert big.error is not None and big.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ran out of memory" in big.error.message and "reduce size" in big.error.message
        assert "the Adam optimizer" in big.error.message
        assert small.error is None and isinstance(small.events[-1], Result)
        # The server is unharmed: the next job runs normally.
        again = small_client.stylize(tiny_content, [tiny_style], **SHORT, **f32)
        assert again.result().iterations == 2
    wait_until(lambda: server.scheduler.running == 0)


def test_a_client_that_stops_reading_stalls_no_one(make_server, tiny_content, tiny_style):
    server = make_server(max_running=1)
    content = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    iterations = 30
    # gRPC lets a peer buffer up to its flow-control window of unread messages (several MiB
    # by default); a small window makes the slow reader push back on the server at once.
    small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)]
    slow_client = Client(server.address, channel_options=small_window)
    with slow_client, Client(server.address) as other:
        # Every iteration sends a 12 KiB preview; this client does not read any of them yet.
        slow = slow_client.stylize(
            content,
            [tiny_style],
            size=64,
            iterations=iterations,
            num_scales=1,
            preview_interval=1,
            preview_size=64,
        )
        started = time.monotonic()
        for _ in range(2):
            assert other.stylize(tiny_content, [tiny_style], **SHORT).result().iterations == 2
        assert time.monotonic() - started < 90
        # The unread job has finished on the server and freed its slot.
        wait_until(lambda: server.scheduler.running == 0 and server.scheduler.queued == 0, 60)
        events = list(slow)
    previews = [e for e in events if isinstance(e, Progress) and e.preview is not None]
    assert isinstance(events[-1], Result) and events[-1].iterations == iterations
    assert any(isinstance(e, Started) for e in events)
    # Older previews were dropped instead of piling up for the reader that fell behind...
    assert 0 < len(previews) < iterations, len(previews)
    # ...and the newest ones survived.
    assert max(p.iteration for p in events if isinstance(p, Progress)) >= iterations - 2


@pytest.fixture(scope="module")
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigkill_mid_job_then_restart(free_port, tiny_content, tiny_style):
    local = LocalServer(port=free_port, device="cpu", grace=3)
    local.start()
    try:
        with Client(local.address) as client:
            running = Watcher(client.stylize(tiny_content, [tiny_style], **LONG))
            running.wait_for(Progress)
            assert local.process is not None
            os.kill(local.process.pid, signal.SIGKILL)
            assert running.done.wait(10)
            assert running.error is not None
            assert running.error.code == grpc.StatusCode.UNAVAILABLE
            assert "connection to the server" in running.error.message
            local.stop()
            # The same client, the same address, the same request: it works after a restart.
            local = LocalServer(port=free_port, device="cpu", grace=3)
            local.start()
            assert client.stylize(tiny_content, [tiny_style], **SHORT).result().iterations == 2
    finally:
        local.stop()


def test_sigterm_mid_job_tells_clients_why(tiny_content, tiny_style):
    # --grace-seconds 1: running jobs get one second to finish before they are stopped.
    local = LocalServer(device="cpu", grace=3)
    with local, Client(local.address) as a, Client(local.address) as b, Client(local.address) as c:
        running = Watcher(a.stylize(tiny_content, [tiny_style], **LONG))
        running.wait_for(Progress)
        queued = Watcher(b.stylize(tiny_content, [tiny_style], **SHORT))
        queued.wait_for(Queued)
        assert local.process is not None
        local.process.send_signal(signal.SIGTERM)
        assert queued.done.wait(5) and running.done.wait(15)
        assert queued.error is not None and running.error is not None
        assert queued.error.code == grpc.StatusCode.UNAVAILABLE
        assert running.error.code == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in queued.error.message
        assert "shutting down" in running.error.message
        with pytest.raises(ImpastoError) as late:
            c.stylize(tiny_content, [tiny_style], **SHORT).result()
        assert late.value.code == grpc.StatusCode.UNAVAILABLE
        assert local.process.wait(15) == 0
