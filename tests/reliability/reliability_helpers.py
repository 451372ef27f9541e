"""Shared bits for the reliability tests: tiny job settings and a background stream reader."""

from __future__ import annotations

import threading
import time

from impasto.client import ImpastoError

TINY = {"size": 32, "iterations": 2, "num_scales": 1}
ENDLESS = {"size": 32, "iterations": 100_000, "num_scales": 1}


class Reader:
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
                self.events.append(event)
        except ImpastoError as exc:
            self.error = exc
        finally:
            self.done.set()

    def wait_for(self, kind, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not any(isinstance(e, kind) for e in self.events):
            assert not self.done.is_set(), f"ended before a {kind.__name__}: {self.error}"
            assert time.monotonic() < end, f"no {kind.__name__} within {timeout}s"
            time.sleep(0.01)


def wait_until(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)
