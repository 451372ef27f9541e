"""One run of the widget, executed off the GUI thread: connect, then stylize plane after plane.

``run_plan`` is a generator for napari's ``thread_worker``: everything it yields arrives in the
GUI thread, and it never raises (a raised error would become napari's traceback dialog); it
returns an ``Outcome`` instead. ``RunControl.cancel`` may be called from the GUI thread at any
time: it cancels the gRPC call itself, so the server stops the job within one iteration.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
from impasto.client import Client, ImpastoError, Job, Progress, Queued, Result, ServerInfo, Started

from napari_impasto.connection import (
    Connection,
    ServerChoice,
    StaleConnectionError,
    describe_error,
)


@dataclass(frozen=True)
class PlaneTask:
    """One plane to stylize: where it sits in the stack and how to read its inputs."""

    index: tuple[int, ...]
    content: Callable[[], np.ndarray]
    mask: Callable[[], np.ndarray] | None = None


#: The regions table lists at most this many labels (the server's default limit of regions).
MAX_REGIONS_SHOWN = 64


def default_style(label: int, styles: int) -> int:
    """The style a label gets until the user chooses: the styles in turn."""
    return (label - 1) % max(1, styles)


@dataclass(frozen=True)
class RunPlan:
    tasks: list[PlaneTask]
    styles: list[np.ndarray]
    style_weights: list[float] | None
    # The regions' styles as chosen in the widget: label -> style index, -1 for the blend. A
    # label without one (added in code, which sends no event) takes its default_style.
    region_styles: dict[int, int]
    options: dict[str, Any]
    # Options set before the preset was chosen, sent before the server had answered: the
    # preset's values replace those the preset sets (known once connected).
    yield_to_preset: frozenset[str] = frozenset()
    init_image: np.ndarray | None = None
    preview_interval: int = 0
    preview_size: int = 0
    # In a stack, each plane after the first starts from the previous plane's result.
    chain_init: bool = True


# ---------------------------------------------------------------- what the worker yields


@dataclass(frozen=True)
class Connected:
    address: str
    info: ServerInfo


@dataclass(frozen=True)
class Regions:
    """The labels the mask's planes hold, and label -> style index for those sent as regions."""

    labels: list[int]
    region_styles: dict[int, int]


@dataclass(frozen=True)
class JobEvent:
    """A client event (Queued, Started, Progress) for plane ``plane`` of ``planes``."""

    plane: int
    planes: int
    event: Queued | Started | Progress


@dataclass(frozen=True)
class PlaneDone:
    plane: int
    planes: int
    index: tuple[int, ...]
    result: Result = field(repr=False)


@dataclass(frozen=True)
class Outcome:
    status: str  # "done" | "cancelled" | "failed"
    message: str = ""
    planes_done: int = 0


class RunControl:
    """Shared between the GUI thread (cancel) and the worker (the current job)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job: Job | None = None
        self.cancelled = False

    def attach(self, job: Job | None) -> None:
        with self._lock:
            self._job = job
            cancel_now = self.cancelled and job is not None
        if cancel_now:
            job.cancel()  # type: ignore[union-attr]

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            job = self._job
        if job is not None:
            job.cancel()


def run_plan(
    plan: RunPlan, connection: Connection, choice: ServerChoice, control: RunControl
) -> Iterator[Regions | Connected | JobEvent | PlaneDone]:
    done = 0
    where = choice.label
    job: Job | None = None

    def connect() -> tuple[Client, ServerInfo]:
        nonlocal where
        client = connection.client(choice)  # starts the local server when needed
        where = connection.address or where
        return client, client.server_info(timeout=10)

    try:
        # The mask's labels, read here rather than in the GUI thread: counting them across a
        # large stack takes seconds. A label outside the wire's range fails the run now,
        # before any slice.
        regions, present = plan_regions(plan, lambda: control.cancelled)
        if control.cancelled:
            return Outcome("cancelled", "cancelled", done)
        if present:
            yield Regions(sorted(set().union(*present)), regions)
        connected = _unless_cancelled(connect, control)
        if connected is None:
            return Outcome("cancelled", "cancelled", done)
        client, info = connected
        if plan.yield_to_preset:
            controls = preset_controls(info)
            plan = replace(
                plan,
                options={
                    k: v
                    for k, v in plan.options.items()
                    if k not in plan.yield_to_preset or k not in controls
                },
            )
        # A newer choice's connection never closes the client under this run's jobs.
        with connection.in_use(client):
            yield Connected(connection.address, info)
            previous: np.ndarray | None = None
            count = len(plan.tasks)
            for number, task in enumerate(plan.tasks):
                job = None
                if control.cancelled:
                    return Outcome("cancelled", "cancelled", done)
                content = task.content()
                mask = task.mask() if task.mask is not None and regions else None
                options = dict(plan.options)
                init_image = plan.init_image
                if plan.chain_init and previous is not None:
                    options["init"] = "image"
                    init_image = previous
                here: dict[int, int] = {}
                if mask is not None:
                    # A label absent from this plane of the stack has no region here.
                    here = {k: v for k, v in regions.items() if k in present[number]}
                    if not here:
                        mask = None
                job = client.stylize(
                    content,
                    plan.styles,
                    style_weights=plan.style_weights,
                    mask=mask,
                    region_styles=here or None,
                    init_image=init_image if options.get("init") == "image" else None,
                    preview_interval=plan.preview_interval,
                    preview_size=plan.preview_size,
                    **options,
                )
                control.attach(job)
                try:
                    for event in job:
                        if isinstance(event, Result):
                            previous = event.image
                            done += 1
                            yield PlaneDone(number, count, task.index, event)
                        else:
                            yield JobEvent(number, count, event)
                finally:
                    control.attach(None)
        return Outcome("done", "", done)
    except ImpastoError as error:
        if control.cancelled:
            # Whatever ended the call after Cancel (CANCELLED, or a channel closed with the
            # panel) is the cancellation, not a failure.
            return Outcome("cancelled", "cancelled", done)
        # A job id means the server had accepted this plane's job before the call ended.
        during_job = job is not None and job.job_id is not None
        return Outcome(
            "failed",
            describe_error(error, where, during_job=during_job, tls=choice.remote_tls),
            done,
        )
    except Exception as error:  # noqa: BLE001 - every failure becomes a notification
        if control.cancelled:
            return Outcome("cancelled", "cancelled", done)
        return Outcome("failed", describe_error(error, where), done)


def plan_regions(
    plan: RunPlan, cancelled: Callable[[], bool] = lambda: False
) -> tuple[dict[int, int], list[set[int]]]:
    """(label -> style index for the labels sent as regions, the labels of each plane's
    mask); reads every plane's mask (LayerError for one that cannot be sent). Stops early
    (with the planes read so far) once ``cancelled()``."""
    if not plan.tasks or plan.tasks[0].mask is None:
        return {}, []
    present = []
    for task in plan.tasks:
        if cancelled():
            break
        mask = task.mask()  # type: ignore[misc]  # uint16
        present.append({int(v) for v in np.flatnonzero(np.bincount(mask.ravel()))} - {0})
    regions: dict[int, int] = {}
    for label in sorted(set().union(*present))[:MAX_REGIONS_SHOWN]:
        style = plan.region_styles.get(label, default_style(label, len(plan.styles)))
        if 0 <= style < len(plan.styles):
            regions[label] = style
    return regions, present


def preset_controls(info: ServerInfo) -> set[str]:
    """The options a preset sets: those in which some preset differs from the defaults."""
    return {
        name
        for values in info.presets.values()
        for name, value in values.items()
        if name != "preset" and info.defaults.get(name) != value
    }


_T = TypeVar("_T")


def _unless_cancelled(call: Callable[[], _T], control: RunControl) -> _T | None:
    """``call()``'s value, or None as soon as the run is cancelled (its exception, if it
    raises first).

    Connecting can block for seconds with nothing to cancel yet (a local server starting, a
    server that accepts connections but does not answer), so it runs in a helper thread that is
    left to finish on its own after a cancel: its call ends at its own timeout, and a local
    server it started stays for the next run, unless another server was chosen meanwhile
    (then it only lets go of its own claim: see Connection)."""
    outcome: list[Any] = []
    finished = threading.Event()

    def target() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
            outcome.append((False, error))
        finally:
            finished.set()

    threading.Thread(target=target, name="impasto-connect", daemon=True).start()
    while not finished.wait(0.05):
        if control.cancelled:
            return None
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def check_server(
    connection: Connection, choice: ServerChoice
) -> tuple[str, str, ServerInfo | None]:
    """(health, address, info) for the status line; never raises (an error becomes the text).
    Health "STALE": another server was chosen while this one was being reached."""
    try:
        client = connection.client(choice)
        health = client.health(timeout=3)
        info = client.server_info(timeout=5) if health == "SERVING" else None
        return health, connection.address, info
    except StaleConnectionError:
        return "STALE", "", None
    except Exception as error:  # noqa: BLE001 - shown to the user
        return "ERROR", describe_error(error, choice.label, tls=choice.remote_tls), None
