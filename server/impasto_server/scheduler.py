"""Jobs shared by all clients: a bounded queue, a cap on running jobs, fair admission.

Fairness is round-robin over clients: each client has its own FIFO, and a freed slot goes to
the next client in turn, so a client with twenty queued jobs delays another client's single job
by at most one of its own. Queue positions are the order this rotation would start the jobs in.

Batching: a job that starts takes along other waiting jobs with the same ``batch_key`` (the same
stage shapes, iterations, pooling and precision), in rotation order, up to ``max_batch`` jobs and
``max_batch_pixels``; a slot then runs the whole batch, one pass through the network for all.
Their clients go to the back of the rotation as if their turn had come. A batch that is not full
starts only once its first job has waited ``batch_wait`` seconds since it was sent, so jobs sent
at about the same time run together.

Memory: with ``memory_capacity``, a batch starts beside running ones only while the memory its
jobs may use (each job's ``memory``, a bound on its device memory) and theirs fit in that many
bytes together; otherwise it waits for some to end (a job whose turn it is waits too, so the
rotation's order holds). A job with none running beside it always starts (each job was checked
alone against the device when it was sent), and takes along only the jobs that fit with it.

Staggered starts: with ``stagger`` (and ``max_running`` > 1), a batch starts beside running ones
only once each of them has passed its start (``settle``, called by their ``work``): a batch's
start is the host's work (its stage's start, its first passes and their recording, on a GPU)
while the device waits, and two batches that start together (sixteen clients whose jobs ended
together send their next ones together) do that work at the same time; staggered, one's start
runs while the other's passes keep the device busy.

Preparing ahead: with ``prepare_ahead`` > 0, ``prepare_threads`` threads of its own run the
``prepare`` of the jobs at the front of the rotation, each a different job (at most
``prepare_ahead`` waiting jobs hold what they made), so a job worker that takes them finds
their host work (decoding to tensors, checks) done, and the device waits less between batches.
The jobs stay queued meanwhile: cancelling one, or a new client's turn coming first, works as
before.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("impasto_server.scheduler")


class SchedulerError(Exception):
    """A job not admitted; ``code`` is the gRPC status name, ``retry_after`` a hint in seconds."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


# ---------------------------------------------------------------- the per-job stream


@dataclass(frozen=True)
class Failure:
    """A job's non-OK end: a gRPC status name, a message for the client and a reason
    (google.rpc.ErrorInfo, UPPER_SNAKE_CASE) that programs can act on."""

    code: str
    message: str
    reason: str = "FAILED"


class Outbox:
    """A job's events on their way to the client, bounded so a slow reader costs no memory.

    Progress and queue updates are droppable: when the box is full the oldest droppable event
    makes room (the client sees fewer progress events, never a blocked optimisation). Previews
    give way only to each other and to essential events: a reader that keeps up gets every
    preview, one that does not gets the newest ones. Started, the result and failures are never
    dropped, so the box holds at most ``capacity`` events plus those two.
    """

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        # (item, rank): 0 droppable, 1 preview, 2 essential
        self._items: deque[tuple[Any, int]] = deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.peak = 0  # the most events ever waiting at once
        self.closed = False

    def _drop_oldest(self, rank: int) -> bool:
        for index, (_old, old_rank) in enumerate(self._items):
            if old_rank == rank:
                del self._items[index]
                self.dropped += 1
                return True
        return False

    def put(self, item: Any, droppable: bool = False, preview: bool = False) -> None:
        rank = 0 if droppable else 1 if preview else 2
        with self._cond:
            if self.closed:
                return
            if len(self._items) >= self.capacity and not self._drop_oldest(0):
                # Nothing droppable is left: a preview or an essential event pushes out the
                # oldest preview, and an essential event goes in regardless.
                made_room = rank > 0 and self._drop_oldest(1)
                if not made_room and rank < 2:
                    self.dropped += 1
                    return
            self._items.append((item, rank))
            self.peak = max(self.peak, len(self._items))
            self._cond.notify_all()

    def finish(self, item: Any) -> None:
        """Put the last item (a result or a Failure); nothing is accepted after it."""
        with self._cond:
            if self.closed:
                return
            self._items.append((item, 2))
            self.peak = max(self.peak, len(self._items))
            self.closed = True
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any | None:
        """The next item, or None after ``timeout`` seconds without one."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            return self._items.popleft()[0]


# ---------------------------------------------------------------- jobs


@dataclass(frozen=True)
class QueuedUpdate:
    position: int
    queue_length: int


@dataclass(eq=False)
class Job:
    """One request's work. ``work(jobs)`` runs in a worker thread with this job and those
    batched with it (all sharing one ``work``), and feeds each one's ``outbox``. ``prepare``,
    if given, is the part of a job's work that the scheduler may run ahead, while the job
    waits (see ``prepared``)."""

    client: str
    work: Callable[[list[Job]], None]
    prepare: Callable[[Job], Any] | None = None
    deadline: float | None = None  # time.monotonic() seconds
    description: dict[str, Any] = field(default_factory=dict)
    payload: Any = None  # what ``work`` needs to run this job
    batch_key: Any = None  # jobs with equal keys (not None) may run as one batch
    pixels: int = 0  # what the job adds to a batch
    memory: int = 0  # bytes of device memory it may use at most (0: not known)
    batch_size: int = 1  # jobs in the batch it ran in
    settled: float | None = None  # when its batch passed its start (``Scheduler.settle``)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    outbox: Outbox = field(default_factory=Outbox)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    state: str = "new"  # new -> queued -> running -> done
    position: int = 0
    stop_reason: str | None = None  # why should_stop turned true: cancelled|deadline|shutdown
    _stop: threading.Event = field(default_factory=threading.Event)
    _ahead: Future | None = None  # ``prepare``'s outcome, when it ran ahead

    def prepared(self) -> Any:
        """What ``prepare`` made, run ahead or now (in the caller's thread); waits if it is
        running ahead, and raises what it raised. The job keeps no reference to it after (a
        finished job's stream may outlive what its run held)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            return ahead.result()
        assert self.prepare is not None
        return self.prepare(self)

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def should_stop(self) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.request_stop("deadline")
        return self._stop.is_set()

    @property
    def queued_seconds(self) -> float:
        return (self.started or time.monotonic()) - self.created


class Scheduler:
    """Admits jobs into a bounded queue and runs at most ``max_running`` batches of them at
    once (a batch is one job unless ``max_batch`` > 1)."""

    def __init__(
        self,
        *,
        queue_capacity: int = 32,
        max_running: int = 1,
        max_per_client: int = 8,
        max_batch: int = 1,
        max_batch_pixels: int = 4 << 20,
        batch_wait: float = 0.0,
        prepare_ahead: int = 0,
        prepare_threads: int = 1,
        memory_capacity: Callable[[], int] | None = None,
        stagger: bool = False,
        on_change: Callable[[Scheduler], None] | None = None,
        on_dropped: Callable[[Job, str], None] | None = None,
    ) -> None:
        if min(queue_capacity, max_running, max_per_client, max_batch) < 1:
            raise ValueError(
                "queue_capacity, max_running, max_per_client and max_batch must be >= 1"
            )
        if prepare_ahead < 0:
            raise ValueError("prepare_ahead must be >= 0")
        if prepare_threads < 1:
            raise ValueError("prepare_threads must be >= 1")
        self.queue_capacity = queue_capacity
        self.max_running = max_running
        self.max_per_client = max_per_client
        self.max_batch = max_batch
        self.max_batch_pixels = max_batch_pixels
        self.batch_wait = batch_wait  # seconds a batchable job may wait for company
        self.prepare_ahead = prepare_ahead  # waiting jobs that may hold their prepare's outcome
        # Bytes the jobs running at once may use together (read when a batch starts; 0 or
        # None: no bound).
        self.memory_capacity = memory_capacity
        self.stagger = stagger  # a batch starts beside running ones once they have settled
        self._busy = 0  # slots running a batch
        self._on_change = on_change
        self._on_dropped = on_dropped  # a job that ended while queued, and why; else logged
        self._cond = threading.Condition()
        # client -> its waiting jobs; the dict's order is the round-robin rotation.
        self._waiting: OrderedDict[str, deque[Job]] = OrderedDict()
        self._running: set[Job] = set()
        self._per_client: Counter[str] = Counter()
        self._closed = False
        self._durations: deque[float] = deque(maxlen=20)
        self._workers = [
            threading.Thread(target=self._worker, name=f"impasto-job-{i}", daemon=True)
            for i in range(max_running)
        ]
        if prepare_ahead:
            self._workers += [
                threading.Thread(target=self._preparer, name=f"impasto-prepare-{i}", daemon=True)
                for i in range(prepare_threads)
            ]
        for worker in self._workers:
            worker.start()

    # -- state
    @property
    def queued(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._waiting.values())

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    def running_jobs(self) -> list[Job]:
        with self._cond:
            return list(self._running)

    def retry_hint(self) -> float:
        """Seconds a refused client might wait before it tries again."""
        with self._cond:
            return self._retry_hint()

    def _retry_hint(self) -> float:
        # About one job's duration per slot ahead of the caller; at least one second.
        typical = sum(self._durations) / len(self._durations) if self._durations else 5.0
        return max(1.0, round(typical, 1))

    # -- admission
    def submit(self, job: Job) -> None:
        """Queue ``job``; raise SchedulerError when the server cannot take it."""
        with self._cond:
            if self._closed:
                raise SchedulerError("UNAVAILABLE", "the server is shutting down; retry elsewhere")
            if self._per_client[job.client] >= self.max_per_client:
                raise SchedulerError(
                    "RESOURCE_EXHAUSTED",
                    f"this client already has {self.max_per_client} jobs queued or running "
                    "(the per-client limit); wait for one to finish",
                    self._retry_hint(),
                )
            waiting = sum(len(q) for q in self._waiting.values())
            if waiting >= self.queue_capacity:
                raise SchedulerError(
                    "RESOURCE_EXHAUSTED",
                    f"the queue is full ({self.queue_capacity} jobs waiting); retry later",
                    self._retry_hint(),
                )
            self._waiting.setdefault(job.client, deque()).append(job)
            self._per_client[job.client] += 1
            job.state = "queued"
            self._publish_positions()
            self._cond.notify_all()
        self._changed()

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """Stop a job: a queued one leaves the queue now, a running one within one iteration."""
        removed = False
        with self._cond:
            if job.state == "queued":
                queue = self._waiting.get(job.client)
                if queue is not None and job in queue:
                    queue.remove(job)
                    if not queue:
                        del self._waiting[job.client]
                    self._uncount(job.client)
                    job.state = "done"
                    job.finished = time.monotonic()
                    removed = True
                    self._publish_positions()
                    self._cond.notify_all()  # the next job may be prepared ahead now
            job.request_stop(reason)
        if removed:
            job.outbox.finish(stopped_failure(reason))
            if self._on_dropped is not None:
                self._on_dropped(job, reason)
            else:
                log.info("job=%s client=%s outcome=%s while queued", job.id, job.client, reason)
            self._changed()

    def close(self) -> list[Job]:
        """Refuse new jobs and end the queued ones; return the jobs still running."""
        with self._cond:
            self._closed = True
            queued = [job for q in self._waiting.values() for job in q]
        for job in queued:
            self.cancel(job, "shutdown")
        with self._cond:
            self._cond.notify_all()
            return list(self._running)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs or waits; False on timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._running or self._waiting:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- the rotation
    def _order(self) -> list[Job]:
        """Waiting jobs in the order the rotation will start them."""
        queues = list(self._waiting.values())
        order: list[Job] = []
        for row in itertools.zip_longest(*queues):
            order += [job for job in row if job is not None]
        return order

    def _publish_positions(self) -> None:
        order = self._order()
        for position, job in enumerate(order, start=1):
            if job.position != position:
                job.position = position
                job.outbox.put(QueuedUpdate(position, len(order)), droppable=True)

    def _remove(self, job: Job) -> None:
        """Take a waiting job out of its client's queue; its client goes to the back."""
        queue = self._waiting.pop(job.client)
        queue.remove(job)
        if queue:
            self._waiting[job.client] = queue

    def _take(self) -> tuple[list[Job], float]:
        """The next batch: the rotation's next job and the waiting jobs that can join it; or
        no jobs and how long to wait before asking again."""
        if self._closed or self._busy >= self.max_running or not self._waiting:
            return [], 0.5
        if self.stagger and self._busy and any(job.settled is None for job in self._running):
            return [], 0.5  # woken sooner when one settles or ends
        lead = next(iter(self._waiting.values()))[0]
        room = self._memory_room()
        if self._busy and lead.memory > room:
            return [], 0.5  # woken sooner when a running job ends
        batch = [lead]
        room -= lead.memory
        if lead.batch_key is not None and self.max_batch > 1:
            pixels = lead.pixels
            for job in self._order()[1:]:
                if len(batch) >= self.max_batch:
                    break
                if (
                    job.batch_key == lead.batch_key
                    and pixels + job.pixels <= self.max_batch_pixels
                    and job.memory <= room
                ):
                    batch.append(job)
                    pixels += job.pixels
                    room -= job.memory
            # A batch that is not full waits a moment for jobs sent at about the same time
            # (clients whose last jobs ended together send their next ones together).
            wait = lead.created + self.batch_wait - time.monotonic()
            if len(batch) < self.max_batch and pixels < self.max_batch_pixels and wait > 0:
                return [], wait
        for job in batch:
            self._remove(job)
        return batch, 0.0

    def _memory_room(self) -> float:
        """Bytes a batch that starts now may use beside the running jobs (unbounded without
        a capacity)."""
        capacity = self.memory_capacity() if self.memory_capacity is not None else 0
        if not capacity:
            return float("inf")
        return capacity - sum(job.memory for job in self._running)

    def _worker(self) -> None:
        while True:
            with self._cond:
                batch, wait = self._take()
                while not batch:
                    if self._closed and not self._waiting:
                        return
                    self._cond.wait(wait)
                    batch, wait = self._take()
                self._busy += 1
                now = time.monotonic()
                for job in batch:
                    job.state = "running"
                    job.started = now
                    job.batch_size = len(batch)
                    self._running.add(job)
                self._publish_positions()
                self._cond.notify_all()  # the next jobs may be prepared ahead now
            self._changed()
            try:
                batch[0].work(batch)
            except Exception:
                log.exception("jobs=%s crashed", ",".join(job.id for job in batch))
                for job in batch:
                    job.outbox.finish(
                        Failure("INTERNAL", "the job failed on the server", "INTERNAL")
                    )
            finally:
                for job in batch:
                    self.release(job)
                with self._cond:
                    self._busy -= 1
                    # A batch holds its slot as long as one job would: one duration per slot.
                    self._durations.append(time.monotonic() - now)
                    self._cond.notify_all()
                self._changed()

    def _next_to_prepare(self) -> Job | None:
        """The first job among the next ``prepare_ahead`` in the rotation that has a
        ``prepare`` not yet run; None while that many waiting jobs hold one's outcome."""
        order = self._order()
        if sum(job._ahead is not None for job in order) >= self.prepare_ahead:
            return None
        for job in order[: self.prepare_ahead]:
            if job._ahead is None and job.prepare is not None:
                return job
        return None

    def _preparer(self) -> None:
        while True:
            with self._cond:
                job = self._next_to_prepare()
                while job is None:
                    if self._closed:
                        return
                    self._cond.wait()
                    job = self._next_to_prepare()
                ahead = job._ahead = Future()
                ahead.set_running_or_notify_cancel()
            try:
                ahead.set_result(job.prepare(job))  # type: ignore[misc]
            except BaseException as exc:  # noqa: BLE001 - raised again where the job runs
                ahead.set_exception(exc)

    def settle(self, job: Job) -> None:
        """A running job's batch has passed its start (see "Staggered starts" above)."""
        with self._cond:
            if job.settled is None:
                job.settled = time.monotonic()
                self._cond.notify_all()

    def release(self, job: Job) -> None:
        """A running job has ended (its batch may go on): it no longer counts as running or
        against its client's limit. Safe to call more than once."""
        with self._cond:
            if job not in self._running:
                return
            job.state = "done"
            job.finished = time.monotonic()
            self._running.discard(job)
            self._uncount(job.client)
            self._cond.notify_all()
        self._changed()

    def _uncount(self, client: str) -> None:
        """One job fewer against ``client``'s limit; a client with none is forgotten (without
        tokens a client is its connection: one entry per connection would pile up)."""
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)


#: Why a job stopped -> (gRPC status name, message).
_STOPPED: dict[str, tuple[str, str]] = {
    "cancelled": ("CANCELLED", "the job was cancelled by the client"),
    "deadline": ("DEADLINE_EXCEEDED", "the job's deadline passed before it finished"),
    "shutdown": (
        "UNAVAILABLE",
        "the server is shutting down and stopped this job before it finished; retry elsewhere",
    ),
}


def stopped_failure(reason: str | None) -> Failure:
    reason = reason if reason in _STOPPED else "cancelled"
    return Failure(*_STOPPED[reason], reason.upper())
