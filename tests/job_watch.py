"""Following jobs in background threads, for the server and reliability tests."""

from __future__ import annotations

import threading
import time

from impasto.client import ImpastoError
from impasto_server.scheduler import Job, Scheduler

SHORT = {"size": 32, "iterations": 2, "num_scales": 1}
LONG = {"size": 32, "iterations": 100_000, "num_scales": 1}


class Watcher:
    """Consumes one job's events in a thread, recording them, when each came, and how the
    stream ended."""

    def __init__(self, job):
        self.job = job
        self.events: list = []
        self.times: list[float] = []
        self.error: ImpastoError | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for event in self.job:
                self.times.append(time.monotonic())
                self.events.append(event)
        except ImpastoError as exc:
            self.error = exc
        finally:
            self.done.set()

    def has(self, kind) -> bool:
        return any(isinstance(e, kind) for e in self.events)

    def first(self, kind) -> float:
        """When the first event of ``kind`` arrived (time.monotonic())."""
        return next(t for t, e in zip(self.times, self.events) if isinstance(e, kind))

    def wait_for(self, kind, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not self.has(kind):
            assert not self.done.is_set() or self.has(kind), (
                f"ended before a {kind.__name__}: {self.error}"
            )
            assert time.monotonic() < end, f"no {kind.__name__} within {timeout}s"
            time.sleep(0.01)


def wait_until(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


class HeldJobs:
    """Scheduler jobs whose work records the batch it ran in and holds until its client is let
    go (``go[client].set()``)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.go: dict[str, threading.Event] = {}

    def make(self, client: str, memory: int = 0, key: str | None = None) -> Job:
        self.go[client] = threading.Event()
        return Job(client=client, work=self.work, memory=memory, batch_key=key)

    def work(self, jobs: list[Job]) -> None:
        self.batches.append([job.client for job in jobs])
        for job in jobs:
            assert self.go[job.client].wait(30)

    def let_go(self) -> None:
        for event in self.go.values():
            event.set()

    @staticmethod
    def running(scheduler: Scheduler) -> set[str]:
        return {job.client for job in scheduler.running_jobs()}
