"""Same-shaped jobs queued together run as one batch on a real server."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from impasto.client import Client, Progress, Queued, Result, Started
from impasto_server.app import parse_args
from impasto_server.engine import StyleOptions
from job_watch import LONG, Watcher, wait_until

# Average pooling keeps a batched Adam run's pixels equal to its solo run's for short runs
# (max pooling's ties are broken by last bits, which batching changes).
ADAM = {
    "size": 32, "iterations": 6, "num_scales": 1, "optimizer": "adam", "seed": 3,
    "pooling": "average", "precision": "float32",
}  # fmt: skip


def _started(watcher: Watcher) -> Started:
    return next(e for e in watcher.events if isinstance(e, Started))


def _block(client: Client, content, style) -> Watcher:
    """A long job that holds the only slot until it is cancelled."""
    blocker = Watcher(client.stylize(content, [style], **LONG, precision="float32"))
    blocker.wait_for(Progress)
    return blocker


def _release(blocker: Watcher, waiting) -> None:
    """Once every job of ``waiting`` is queued, free the slot: they start as one batch."""
    for watcher in waiting:
        watcher.wait_for(Queued)
    blocker.job.cancel()


def test_same_shaped_adam_jobs_run_as_one_batch_with_their_own_results(
    make_server, connect, shared_engine, tiny_content, tiny_style
):
    server = make_server(max_running=1, max_batch=4)
    clients = connect(server, 5)
    assert clients[0].server_info().limits["max_batch_jobs"] == 4
    blocker = _block(clients[0], tiny_content, tiny_style)
    contents = [tiny_content, np.ascontiguousarray(tiny_content[::-1]), 255 - tiny_content]
    weights = [1e3, 1e2, 1e4]
    batch = [
        Watcher(clients[1 + i].stylize(c, [tiny_style], style_weight=w, **ADAM))
        for i, (c, w) in enumerate(zip(contents, weights))
    ]
    other_shape = Watcher(clients[4].stylize(tiny_content, [tiny_style], **{**ADAM, "size": 40}))
    _release(blocker, (*batch, other_shape))
    for watcher in (*batch, other_shape):
        assert watcher.done.wait(60) and watcher.error is None, watcher.error
    assert [_started(w).batch_size for w in batch] == [3, 3, 3]
    assert _started(other_shape).batch_size == 1
    # Each batched job's image is the one it gets alone, within a few levels.
    for watcher, c, w in zip(batch, contents, weights):
        result = watcher.events[-1]
        assert isinstance(result, Result)
        solo = list(shared_engine.run(c, [tiny_style], StyleOptions(style_weight=w, **ADAM)))
        alone = solo[-1].image
        difference = np.abs(result.image.astype(int) - alone.astype(int))
        assert difference.max() <= 8 and difference.mean() < 0.5
    assert not np.array_equal(batch[0].events[-1].image, batch[1].events[-1].image)
    wait_until(lambda: server.scheduler.running == 0 and server.scheduler.queued == 0)
    # What an operator sees: three batches ran, the blocker and the other shape alone.
    sample = server.metrics.registry.get_sample_value
    assert sample("impasto_batch_jobs_count") == 3 and sample("impasto_batch_jobs_sum") == 5
    assert sample("impasto_batch_jobs_bucket", {"le": "1.0"}) == 2
    assert sample("impasto_batch_jobs_bucket", {"le": "4.0"}) == 3


@pytest.mark.parametrize("batch_lbfgs", [False, True])
def test_lbfgs_jobs_batch_only_when_the_server_allows_it(
    make_server, connect, tiny_content, tiny_style, batch_lbfgs
):
    server = make_server(max_running=1, max_batch=4, batch_lbfgs=batch_lbfgs)
    clients = connect(server, 3)
    blocker = _block(clients[0], tiny_content, tiny_style)
    lbfgs = {**ADAM, "optimizer": "lbfgs"}
    jobs = [Watcher(c.stylize(tiny_content, [tiny_style], **lbfgs)) for c in clients[1:]]
    _release(blocker, jobs)
    for watcher in jobs:
        assert watcher.done.wait(60) and watcher.error is None, watcher.error
    expected = 2 if batch_lbfgs else 1
    assert [_started(w).batch_size for w in jobs] == [expected, expected]


def test_cancelling_one_job_of_a_batch_leaves_the_others_running(
    make_server, connect, tiny_content, tiny_style
):
    server = make_server(max_running=1, max_batch=4)
    clients = connect(server, 3)
    blocker = _block(clients[0], tiny_content, tiny_style)
    endless = {**ADAM, "iterations": 100_000}
    jobs = [Watcher(c.stylize(tiny_content, [tiny_style], **endless)) for c in clients[1:]]
    _release(blocker, jobs)
    for watcher in jobs:
        watcher.wait_for(Progress)
    assert _started(jobs[0]).batch_size == 2
    jobs[0].job.cancel()
    assert jobs[0].done.wait(10) and jobs[0].error.code == grpc.StatusCode.CANCELLED
    before = len(jobs[1].events)
    wait_until(lambda: len(jobs[1].events) > before + 3)
    assert not jobs[1].done.is_set()
    assert server.scheduler.running == 1
    jobs[1].job.cancel()
    assert jobs[1].done.wait(10) and jobs[1].error.code == grpc.StatusCode.CANCELLED
    wait_until(lambda: server.scheduler.running == 0)


def test_jobs_whose_memory_does_not_fit_together_are_not_batched(
    make_server, connect, tiny_content, tiny_style
):
    # 16 MiB of simulated device memory holds one of these jobs (about 11 MiB by its memory
    # plan) but not two: each runs alone.
    server = make_server(max_running=1, max_batch=4, simulated_memory_mb=16)
    clients = connect(server, 4)
    blocker = _block(clients[0], tiny_content, tiny_style)
    jobs = [Watcher(c.stylize(tiny_content, [tiny_style], **ADAM)) for c in clients[1:]]
    _release(blocker, jobs)
    for watcher in jobs:
        assert watcher.done.wait(60) and watcher.error is None, watcher.error
        assert _started(watcher).batch_size == 1


def test_a_batch_too_big_for_the_device_still_finishes_every_job(
    make_server, connect, tiny_content, tiny_style
):
    # The jobs are checked against 64 MiB (--job-memory-mb), so three fit together by their
    # plans, but the device holds 16 MiB: one of them (about 11 MiB), not three in one pass
    # (about 20 MiB). The batch goes on one pass per job instead of failing.
    server = make_server(max_running=1, max_batch=4, simulated_memory_mb=16, job_memory_mb=64)
    clients = connect(server, 4)
    blocker = _block(clients[0], tiny_content, tiny_style)
    jobs = [Watcher(c.stylize(tiny_content, [tiny_style], **ADAM)) for c in clients[1:]]
    _release(blocker, jobs)
    for watcher in jobs:
        assert watcher.done.wait(60) and watcher.error is None, watcher.error
        assert _started(watcher).batch_size == 3
        assert watcher.events[-1].iterations == ADAM["iterations"]


def test_jobs_sent_together_to_an_idle_server_wait_for_each_other(
    make_server, connect, tiny_content, tiny_style
):
    server = make_server(max_running=1, max_batch=4, batch_wait_ms=1500)
    clients = connect(server, 3)
    sent = time.monotonic()
    jobs = [Watcher(c.stylize(tiny_content, [tiny_style], **ADAM)) for c in clients]
    for watcher in jobs:
        assert watcher.done.wait(60) and watcher.error is None, watcher.error
    # Nothing ran, so the first job waited for company, and all three ran as one batch.
    assert [_started(w).batch_size for w in jobs] == [3, 3, 3]
    assert jobs[0].first(Started) - sent < 1.5 + 1.0


def test_a_cpu_server_does_not_batch_unless_told(make_server):
    server = make_server()
    with Client(server.address) as client:
        assert client.server_info().limits["max_batch_jobs"] == 1
    assert parse_args(["--max-batch", "8", "--batch-lbfgs"]).max_batch == 8
    for bad in (["--max-batch", "0"], ["--max-batch-megapixels", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
