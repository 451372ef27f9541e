"""Batches running at once only while their jobs' memory fits together: the scheduler's rule
(each job's ``memory``, the scheduler's ``memory_capacity``), and the bound the server gives each
job from its memory plan."""

from __future__ import annotations

import time

from impasto.client import Client, Result, Started
from impasto_server.engine.memory import quick_bound
from impasto_server.scheduler import Scheduler
from job_watch import LONG, Watcher, wait_until


def scheduler(capacity: int, **kwargs) -> Scheduler:
    return Scheduler(max_running=2, memory_capacity=lambda: capacity, **kwargs)


def test_batches_whose_memory_fits_together_run_at_once(jobs):
    s = scheduler(100)
    try:
        s.submit(jobs.make("a", 60))
        s.submit(jobs.make("b", 40))
        wait_until(lambda: jobs.running(s) == {"a", "b"})
    finally:
        s.close()


def test_a_job_that_does_not_fit_beside_the_running_ones_waits_for_them(jobs):
    s = scheduler(100)
    try:
        s.submit(jobs.make("a", 60))
        wait_until(lambda: jobs.running(s) == {"a"})
        s.submit(jobs.make("b", 50))  # 110 with a's: waits
        s.submit(jobs.make("c", 10))  # would fit, but b's turn comes first
        time.sleep(0.5)
        assert jobs.running(s) == {"a"} and s.queued == 2
        jobs.go["a"].set()
        # b starts once a ends, and c beside it (60 of 100)
        wait_until(lambda: jobs.running(s) == {"b", "c"})
        assert jobs.batches[0] == ["a"] and sorted(jobs.batches[1:]) == [["b"], ["c"]]
    finally:
        s.close()


def test_a_job_alone_starts_whatever_its_memory(jobs):
    s = scheduler(100)
    try:
        s.submit(jobs.make("a", 500))  # checked alone when sent; nothing runs beside it
        wait_until(lambda: jobs.running(s) == {"a"})
        s.submit(jobs.make("b", 1))
        time.sleep(0.5)
        assert jobs.running(s) == {"a"}
        jobs.go["a"].set()
        wait_until(lambda: jobs.running(s) == {"b"})
    finally:
        s.close()


def test_a_batch_beside_a_running_one_takes_only_the_jobs_that_fit(jobs):
    s = scheduler(100, max_batch=4, batch_wait=0.5)  # b, c and d are all sent meanwhile
    try:
        s.submit(jobs.make("a", 50))
        wait_until(lambda: jobs.running(s) == {"a"})
        for client in "bcd":
            s.submit(jobs.make(client, 20, key="k"))
        # b and c fit beside a (90 of 100); d waits for its own batch
        wait_until(lambda: jobs.running(s) == {"a", "b", "c"})
        assert jobs.batches[1] == ["b", "c"] and s.queued == 1
        jobs.go["a"].set()
        wait_until(lambda: "d" in jobs.running(s))
    finally:
        s.close()


def test_a_batch_alone_takes_along_only_the_jobs_that_fit_with_it(jobs):
    s = Scheduler(max_batch=4, batch_wait=0.5, memory_capacity=lambda: 100)
    try:
        for client in "abc":
            s.submit(jobs.make(client, 40, key="k"))
        wait_until(lambda: jobs.running(s) == {"a", "b"})  # 80 of 100; c's 40 would not fit
        assert s.queued == 1
        jobs.go["a"].set()
        jobs.go["b"].set()
        wait_until(lambda: jobs.running(s) == {"c"})
        assert jobs.batches == [["a", "b"], ["c"]]
    finally:
        s.close()


def test_without_a_capacity_jobs_run_at_once_as_max_running_allows(jobs):
    s = Scheduler(max_running=2)
    try:
        s.submit(jobs.make("a", 10**15))
        s.submit(jobs.make("b", 10**15))
        wait_until(lambda: jobs.running(s) == {"a", "b"})
    finally:
        s.close()


def test_the_server_bounds_each_jobs_memory_from_its_plan(make_server, tiny_content, tiny_style):
    server = make_server(max_running=2, job_memory_mb=64 << 10)
    with Client(server.address) as client:
        assert client.server_info().limits["max_running_jobs"] == 2
        watcher = Watcher(client.stylize(tiny_content, [tiny_style], **LONG))
        wait_until(lambda: watcher.has(Started))
        (job,) = server.scheduler.running_jobs()
        started = next(e for e in watcher.events if isinstance(e, Started))
        # a small job far inside 64 GiB: its bound is the quick bound that passed it unmeasured
        assert job.memory == quick_bound(started.height * started.width, 1, 1.0) > 0
        watcher.job.cancel()
        assert watcher.done.wait(30) and not watcher.has(Result)
