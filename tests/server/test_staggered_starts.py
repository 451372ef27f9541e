"""Batches running at once start staggered: a batch starts beside running ones only once they
have passed their start (the scheduler's ``stagger``, the server's with --max-running above 1).
Without it batches start at once: tests/server/test_memory_concurrency.py."""

from __future__ import annotations

import time

import pytest
from impasto.client import Client, Started
from impasto_server.scheduler import Scheduler
from job_watch import LONG, Watcher, wait_until


@pytest.fixture
def staggered():
    scheduler = Scheduler(max_running=2, stagger=True)
    yield scheduler
    scheduler.close()


def test_a_batch_starts_beside_a_running_one_once_that_one_has_settled(jobs, staggered):
    a = jobs.make("a")
    staggered.submit(a)
    staggered.submit(jobs.make("b"))
    wait_until(lambda: jobs.running(staggered) == {"a"})
    time.sleep(0.3)
    assert jobs.running(staggered) == {"a"} and staggered.queued == 1  # a has not passed its start
    staggered.settle(a)
    wait_until(lambda: jobs.running(staggered) == {"a", "b"})
    assert a.settled is not None


def test_a_batch_that_ends_before_it_settles_lets_the_next_one_start(jobs, staggered):
    staggered.submit(jobs.make("a"))
    staggered.submit(jobs.make("b"))
    wait_until(lambda: jobs.running(staggered) == {"a"})
    jobs.go["a"].set()  # ends, never settled
    wait_until(lambda: jobs.running(staggered) == {"b"})


def test_the_server_starts_a_second_job_once_the_first_has_passed_its_start(
    make_server, tiny_content, tiny_style
):
    server = make_server(max_running=2)
    long = {**LONG, "size": 64}
    with Client(server.address) as one, Client(server.address) as two:
        first = Watcher(one.stylize(tiny_content, [tiny_style], **long))
        first.wait_for(Started)
        second = Watcher(two.stylize(tiny_content, [tiny_style], **long))
        second.wait_for(Started)
        jobs = sorted(server.scheduler.running_jobs(), key=lambda job: job.started)
        assert len(jobs) == 2  # at once, as --max-running 2 allows
        # the second started after the first's third iteration (its start passed), not at once
        assert jobs[0].settled is not None and jobs[1].started >= jobs[0].settled
        assert jobs[0].description["done_iterations"] >= 3
        for watcher in (first, second):
            watcher.job.cancel()
            assert watcher.done.wait(30)
