"""Batches running at once start staggered: a batch starts beside running ones only once they
have passed their start (the scheduler's ``stagger``, the server's with --max-running above 1)."""

from __future__ import annotations

import threading
import time

import pytest
from impasto.client import Client, Started
from impasto_server.scheduler import Job, Scheduler
from job_watch import LONG, Watcher, wait_until


class Held:
    """Jobs whose work holds until let go."""

    def __init__(self) -> None:
        self.go: dict[str, threading.Event] = {}

    def make(self, client: str) -> Job:
        self.go[client] = threading.Event()
        return Job(client=client, work=self.work)

    def work(self, jobs: list[Job]) -> None:
        for job in jobs:
            assert self.go[job.client].wait(30)


def _running(scheduler: Scheduler) -> set[str]:
    return {job.client for job in scheduler.running_jobs()}


@pytest.fixture
def held():
    made = Held()
    yield made
    for event in made.go.values():
        event.set()


@pytest.fixture
def staggered(held):
    scheduler = Scheduler(max_running=2, stagger=True)
    yield scheduler
    scheduler.close()


def test_a_batch_starts_beside_a_running_one_once_that_one_has_settled(held, staggered):
    a = held.make("a")
    staggered.submit(a)
    staggered.submit(held.make("b"))
    wait_until(lambda: _running(staggered) == {"a"})
    time.sleep(0.3)
    assert _running(staggered) == {"a"} and staggered.queued == 1  # a has not passed its start
    staggered.settle(a)
    wait_until(lambda: _running(staggered) == {"a", "b"})
    assert a.settled is not None


def test_a_batch_that_ends_before_it_settles_lets_the_next_one_start(held, staggered):
    staggered.submit(held.make("a"))
    staggered.submit(held.make("b"))
    wait_until(lambda: _running(staggered) == {"a"})
    held.go["a"].set()  # ends, never settled
    wait_until(lambda: _running(staggered) == {"b"})


def test_without_stagger_batches_start_at_once(held):
    s = Scheduler(max_running=2)
    try:
        s.submit(held.make("a"))
        s.submit(held.make("b"))
        wait_until(lambda: _running(s) == {"a", "b"})
    finally:
        s.close()


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
