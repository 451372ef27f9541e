"""Queue, cancellation, deadlines and fairness on a real server with one running slot."""

from __future__ import annotations

import time

import grpc
import pytest
from impasto.client import Client, ImpastoError, Progress, Queued, Result, Started
from job_watch import LONG, SHORT, Watcher, wait_until


def test_cancelling_a_running_job_frees_the_slot(make_server, tiny_content, tiny_style):
    server = make_server(max_running=1)
    with Client(server.address) as a, Client(server.address) as b:
        long = Watcher(a.stylize(tiny_content, [tiny_style], **LONG))
        long.wait_for(Progress)
        waiting = Watcher(b.stylize(tiny_content, [tiny_style], **SHORT))
        waiting.wait_for(Queued)
        assert not waiting.has(Started)
        cancelled_at = time.monotonic()
        long.job.cancel()
        assert waiting.done.wait(30) and waiting.error is None
        assert isinstance(waiting.events[-1], Result)
        assert waiting.first(Started) - cancelled_at < 2.0
        assert long.error is not None and long.error.code == grpc.StatusCode.CANCELLED
    wait_until(lambda: server.scheduler.running == 0 and server.scheduler.queued == 0)


def test_cancelling_a_queued_job_removes_it(make_server, tiny_content, tiny_style):
    server = make_server(max_running=1)
    with Client(server.address) as a, Client(server.address) as b, Client(server.address) as c:
        long = Watcher(a.stylize(tiny_content, [tiny_style], **LONG))
        long.wait_for(Started)
        second = Watcher(b.stylize(tiny_content, [tiny_style], **SHORT))
        second.wait_for(Queued)
        third = Watcher(c.stylize(tiny_content, [tiny_style], **SHORT))
        third.wait_for(Queued)
        assert third.events[-1].position == 2
        assert c.server_info().queued_jobs == 2
        second.job.cancel()
        assert second.done.wait(5) and second.error.code == grpc.StatusCode.CANCELLED
        wait_until(lambda: third.events[-1].position == 1)
        assert third.events[-1].queue_length == 1
        assert server.scheduler.queued == 1
        long.job.cancel()
        assert third.done.wait(30) and third.error is None
    # each client (here: each connection) is forgotten once it has no job, cancelled or ended
    wait_until(lambda: not server.scheduler._per_client)


def test_full_queue_answers_resource_exhausted_with_retry_hint(
    make_server, connect, tiny_content, tiny_style
):
    server = make_server(max_running=1, queue_size=1)
    clients = connect(server, 3)
    running = Watcher(clients[0].stylize(tiny_content, [tiny_style], **LONG))
    running.wait_for(Started)
    queued = Watcher(clients[1].stylize(tiny_content, [tiny_style], **SHORT))
    queued.wait_for(Queued)
    started = time.monotonic()
    with pytest.raises(ImpastoError) as info:
        clients[2].stylize(tiny_content, [tiny_style], **SHORT).result()
    assert time.monotonic() - started < 1.0
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in info.value.message
    assert info.value.retry_after is not None and info.value.retry_after >= 1.0
    running.job.cancel()
    assert queued.done.wait(30) and queued.error is None


def test_per_client_cap(make_server, tiny_content, tiny_style):
    server = make_server(max_running=1, max_jobs_per_client=1)
    with Client(server.address) as a:
        running = Watcher(a.stylize(tiny_content, [tiny_style], **LONG))
        running.wait_for(Started)
        with pytest.raises(ImpastoError) as info:
            a.stylize(tiny_content, [tiny_style], **SHORT).result()
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "per-client" in info.value.message
        running.job.cancel()


def test_a_busy_client_does_not_starve_another(make_server, tiny_content, tiny_style):
    server = make_server(max_running=1, max_jobs_per_client=20)
    with Client(server.address) as busy, Client(server.address) as other:
        blocker = Watcher(busy.stylize(tiny_content, [tiny_style], **LONG))
        blocker.wait_for(Started)
        many = [Watcher(busy.stylize(tiny_content, [tiny_style], **SHORT)) for _ in range(6)]
        for w in many:
            w.wait_for(Queued)
        single = Watcher(other.stylize(tiny_content, [tiny_style], **SHORT))
        single.wait_for(Queued)
        # Round-robin: at most one of the busy client's jobs goes before the other's one.
        assert single.events[-1].position == 2
        blocker.job.cancel()
        assert single.done.wait(60) and single.error is None
        for w in many:
            assert w.done.wait(60) and w.error is None
        order = sorted(many + [single], key=lambda w: w.first(Started))
        assert order.index(single) <= 1


def test_deadline_stops_the_job_and_frees_the_slot(make_server, tiny_content, tiny_style):
    server = make_server(max_running=1)
    with Client(server.address) as a, Client(server.address) as b:
        started = time.monotonic()
        with pytest.raises(ImpastoError) as info:
            a.stylize(tiny_content, [tiny_style], timeout=1.5, **LONG).result()
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3.0
        result = b.stylize(tiny_content, [tiny_style], timeout=30, **SHORT).result()
        assert result.iterations == 2
    wait_until(lambda: server.scheduler.running == 0)
