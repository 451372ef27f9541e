"""Helpers for following jobs in background threads."""

from __future__ import annotations

import threading
import time

from impasto.client import ImpastoError

SHORT = {"size": 32, "iterations": 2, "num_scales": 1}
LONG = {"size": 32, "iterations": 100_000, "num_scales": 1}


class Watcher:
    """Consumes one job's events in a thread, recording them and how the stream ended."""

    def __init__(self, job):
        self.job = job
        self.events: list = []
        self.error: ImpastoError | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for event in self.job:
                self.events.append((time.monotonic(), event))
        except ImpastoError as exc:
            self.error = exc
        finally:
            self.done.set()

    def has(self, kind) -> bool:
        return any(isinstance(e, kind) for _, e in self.events)

    def first(self, kind) -> float:
        return next(t for t, e in self.events if isinstance(e, kind))

    def wait_for(self, kind, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while not self.has(kind):
            assert not self.done.is_set() or self.has(kind), f"ended early: {self.error}"
            assert time.monotonic() < end, f"no {kind.__name__} within {timeout}s"
            time.sleep(0.01)


def wait_until(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)
