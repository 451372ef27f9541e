"""The gRPC servicer: validate -> schedule -> stream."""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from impasto import __version__ as client_version
from impasto.v1 import style_transfer_pb2 as pb
from impasto.v1 import style_transfer_pb2_grpc as pb_grpc

from impasto_server import convert
from impasto_server.auth import TokenStore, bearer, client_identity
from impasto_server.engine import (
    Cancelled,
    EngineError,
    InsufficientMemory,
    Progress,
    Result,
    is_out_of_memory,
)
from impasto_server.engine.graphs import empty_cache
from impasto_server.engine.imaging import PIXEL_BYTES
from impasto_server.engine.memory_budget import MemoryBudget
from impasto_server.held import Claim, HeldFull, HeldImages
from impasto_server.metrics import Metrics
from impasto_server.scheduler import (
    Failure,
    Job,
    QueuedUpdate,
    Scheduler,
    SchedulerError,
    stopped_failure,
)

log = logging.getLogger("impasto_server.jobs")

#: google.rpc.ErrorInfo domain of the reasons a started job ends with.
ERROR_DOMAIN = "impasto.v1"
#: How often a waiting stream wakes to notice a vanished client (the cancel callback is the
#: fast path; this is the safety net).
_POLL_SECONDS = 0.5
# The iteration from which a job's batch has passed its start (Scheduler.settle): its first
# stage's pass is recorded as a CUDA graph at its third pass (engine/graphs.py), and that
# iteration's events come after it.
SETTLED_AT = 3


@dataclass
class ServiceConfig:
    limits: convert.Limits
    queue_capacity: int
    max_running: int
    max_per_client: int
    max_message_bytes: int
    #: The accepted bearer tokens (None: the server takes none).
    tokens: TokenStore | None = None
    #: Jobs that may run as one batch (1: none), and the most pixels one batch may hold.
    max_batch: int = 1
    max_batch_pixels: int = 4 << 20
    #: Batch L-BFGS jobs too. Off by default: L-BFGS amplifies the last-bit differences of
    #: batched convolutions, so its batched results are as good but not equal to solo ones.
    batch_lbfgs: bool = False
    #: When set, each job's tensors may use at most this many bytes (a simulated device
    #: memory, to exercise out-of-memory handling where there is no GPU to fill).
    memory_budget_bytes: int | None = None
    #: The memory one job may use, checked before it is queued (None: what the engine read
    #: from its device at start; 0: no check).
    job_memory_bytes: int | None = None
    #: Plain progress events sent per second per job at most (see ProgressPacing); 0: every
    #: iteration's.
    progress_rate: float = 0.0
    #: Seconds a job's stream may go without a message sent once the job ended (its last
    #: messages unread by a client that stopped reading): then the call is cancelled, and its
    #: thread freed. 0: never.
    unread_grace_seconds: float = 60.0
    #: Bytes that requests' images (and the requests themselves) may hold in the host's memory
    #: from their arrival to their job's end, all requests together (see held.py); 0: no limit.
    max_held_bytes: int = 0


@dataclass(frozen=True)
class StartedEvent:
    total_iterations: int
    height: int
    width: int
    batch_size: int = 1


class ProgressPacing:
    """Which plain progress events of a batch's jobs go to their streams: at most ``rate`` a
    second per job, and always a job's first, the first of each stage and the last iteration's
    (events with a preview always go, and count as sent). Each event sent wakes the job's
    stream thread, which takes the interpreter lock to build and send it, and the client
    parses it: at a GPU's pace, pacing them took a quarter to a third off the server's CPU
    time a job and about two thirds off the clients', and less of the job worker's time went
    to handing over events (benchmarks/server_host.py). The events left out are never queued,
    as those coalesced for a slow reader (see Outbox)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._sent: dict[int, tuple[float, int]] = {}  # job's index: when, which stage

    def due(self, index: int, event: Progress, preview: bool = False) -> bool:
        now = time.monotonic()
        last = self._sent.get(index)
        if (
            preview
            or not self.interval
            or last is None
            or event.scale_index != last[1]
            or event.iteration >= event.total
            or now - last[0] >= self.interval
        ):
            self._sent[index] = (now, event.scale_index)
            return True
        return False


def _status(code: grpc.StatusCode, message: str, details: list[Any] | None = None) -> grpc.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details or []:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


def too_large(exc: InsufficientMemory) -> grpc.Status:
    """RESOURCE_EXHAUSTED for a job that cannot fit the memory one job may use: BadRequest
    names options.size, ErrorInfo (reason TOO_LARGE) carries the figures."""
    metadata = {"needed_bytes": str(exc.needed), "available_bytes": str(exc.capacity)}
    if exc.largest is not None:
        metadata["largest_height"], metadata["largest_width"] = map(str, exc.largest)
    details = [
        _field_violations([("options.size", str(exc))]),
        error_details_pb2.ErrorInfo(reason="TOO_LARGE", domain=ERROR_DOMAIN, metadata=metadata),
    ]
    message = f"too large for this server's memory: options.size: {exc}"
    return _status(grpc.StatusCode.RESOURCE_EXHAUSTED, message, details)


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromTimedelta(datetime.timedelta(seconds=seconds))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def _field_violations(violations: list[tuple[str, str]]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in violations
        ]
    )


def bad_request(violations: list[tuple[str, str]]) -> grpc.Status:
    summary = "; ".join(f"{f}: {d}" for f, d in violations[:3])
    return _status(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"invalid request: {summary}",
        [_field_violations(violations)],
    )


class StyleTransferService(pb_grpc.StyleTransferServiceServicer):
    """Serves Stylize and GetServerInfo on top of one Engine and one Scheduler."""

    def __init__(self, config: ServiceConfig, scheduler: Scheduler, metrics: Metrics) -> None:
        self.config = config
        self.scheduler = scheduler
        self.metrics = metrics
        self.engine: Any = None  # set once the weights are loaded
        self.accepting = True
        # The calls whose stream is open, and when each last sent a message, watched for a
        # client that stopped reading them.
        self._open: dict[Job, tuple[grpc.ServicerContext, list[float]]] = {}
        # The jobs whose result is made and whose stream, still open, has not sent it yet.
        self._unsent: set[Job] = set()
        self._open_lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()
        self.held = HeldImages(config.max_held_bytes)

    def close(self) -> None:
        """Stop watching streams (the server has shut down)."""
        self._closed.set()

    def job_memory(self) -> int:
        """Bytes one job may use (0: unchecked)."""
        if self.config.job_memory_bytes is not None:
            return self.config.job_memory_bytes
        return self.engine.job_memory_bytes if self.engine is not None else 0

    # ------------------------------------------------------------ GetServerInfo
    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext):
        from impasto_server import __version__
        from impasto_server.engine import PRESETS

        engine = self.engine
        limits = self.config.limits
        response = pb.GetServerInfoResponse(
            version=__version__ or client_version,
            device=engine.device if engine else "loading",
            weights=engine.weights_name if engine else "loading",
            limits=pb.Limits(
                max_pixels=min(engine.max_pixels, limits.max_pixels)
                if engine
                else limits.max_pixels,
                max_message_bytes=self.config.max_message_bytes,
                queue_capacity=self.config.queue_capacity,
                max_running_jobs=self.config.max_running,
                max_jobs_per_client=self.config.max_per_client,
                max_styles=limits.max_styles,
                max_regions=limits.max_regions,
                max_input_pixels=limits.max_input_pixels,
                max_batch_jobs=self.config.max_batch,
                job_memory_bytes=self.job_memory(),
                progress_rate=self.config.progress_rate,
                max_held_bytes=self.held.capacity,
            ),
            queued_jobs=self.scheduler.queued,
            running_jobs=self.scheduler.running,
            auth_required=self.config.tokens is not None,
            cuda_graphs=bool(engine and engine.cuda_graphs),
            compiled_network=getattr(engine, "compiled", None) is not None,
            token=self._token_state(context),
        )
        precision = engine.default_precision if engine else "float32"
        response.precision = convert.wire.PRECISIONS[precision]
        for name, options in PRESETS.items():
            message = convert.options_message(options.replace(precision=precision))
            response.presets.add(preset=convert.wire.PRESETS[name], options=message)
            if name == "default":
                response.defaults.CopyFrom(message)
        supported = engine.supported_precisions if engine else ("float32",)
        response.allowed.CopyFrom(convert.allowed_values(tuple(supported)))
        return response

    def _token_state(self, context: grpc.ServicerContext) -> int:
        tokens = self.config.tokens
        state = (
            "not_needed" if tokens is None else tokens.state(bearer(context.invocation_metadata()))
        )
        return convert.wire.TOKEN_STATES[state]

    # ------------------------------------------------------------ Stylize
    def Stylize(
        self, request: pb.StylizeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StylizeResponse]:
        # The request's bytes and images count against the server's held memory until its
        # stream ends, however it ends.
        claim = self.held.claim()
        try:
            yield from self._stylize(request, context, claim)
        finally:
            claim.release()

    def _stylize(
        self, request: pb.StylizeRequest, context: grpc.ServicerContext, claim: Claim
    ) -> Iterator[pb.StylizeResponse]:
        engine = self.engine
        if engine is None:
            self.rejected("unavailable", context, "the model is still loading")
            context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")
        if not self.accepting:
            # Only a call that arrived just as the drain closed the transport gets here; with
            # no retry pushback, gRPC's retry policy may send it to another replica.
            self.rejected("unavailable", context, "the server is shutting down")
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        try:
            claim.take(request.ByteSize())
            parsed = convert.parse_request(
                request, self.config.limits, default_precision=engine.default_precision,
                on_image=lambda image: self._hold(claim, image, context),
            )  # fmt: skip
            engine.validate(parsed.content, parsed.styles, parsed.options, **parsed.engine_kwargs())
            height, width = engine.output_shape(parsed.content, parsed.options)
            # The server's own limit may be tighter than the (possibly shared) engine's.
            if height * width > self.config.limits.max_pixels:
                raise EngineError(
                    "size",
                    f"the result would be {height}x{width} = {height * width} pixels, above "
                    f"this server's limit of {self.config.limits.max_pixels}",
                )
            # Refused now, not lost after its work: a result larger than a message cannot go.
            wire_bytes = convert.result_message_bytes(
                parsed.content, parsed.output_format, height, width
            )
            if wire_bytes > self.config.max_message_bytes:
                raise EngineError(
                    "size",
                    f"the result would be {height}x{width} {parsed.content.dtype} in "
                    f"{parsed.output_format}, up to {wire_bytes} bytes: above this server's "
                    f"message limit of {self.config.max_message_bytes} "
                    "(limits.max_message_bytes); ask for a smaller size or an encoded "
                    "output_format (PNG sends float as 16-bit, JPEG as 8-bit)",
                )
        except convert.RequestError as exc:
            self.rejected("invalid", context, "; ".join(f"{f}: {m}" for f, m in exc.violations))
            context.abort_with_status(bad_request(exc.violations))
        except EngineError as exc:
            self.rejected("invalid", context, f"{convert.wire_field(exc.field)}: {exc.message}")
            context.abort_with_status(bad_request([(convert.wire_field(exc.field), exc.message)]))
        except HeldFull as exc:
            self.rejected("host_memory", context, str(exc))
            context.abort_with_status(
                _status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    str(exc),
                    [_retry_info(self.scheduler.retry_hint())],
                )
            )
        except Cancelled:
            log.info("client=%s left while its request's images were decoded",
                     client_identity(context))  # fmt: skip
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before the job was queued")
        try:
            parsed.memory_plan = engine.plan_memory(
                parsed.content, parsed.styles, parsed.options, capacity=self.job_memory(),
                should_stop=lambda: not context.is_active(),  # cancelled, or its deadline
                **parsed.engine_kwargs(),
            )  # fmt: skip
        except InsufficientMemory as exc:
            self.rejected("too_large", context, str(exc))
            context.abort_with_status(too_large(exc))
        except Cancelled:
            log.info("client=%s left while its job's memory was measured",
                     client_identity(context))  # fmt: skip
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before the job was queued")

        client = client_identity(context)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        job = Job(
            client=client,
            work=self._run_batch,
            prepare=lambda job: self._prepare(job, claim),
            payload=parsed,
            deadline=deadline,
            description={
                "size": f"{height}x{width}",
                "iterations": parsed.options.iterations,
                "styles": len(parsed.styles),
            },
            batch_key=self._batch_key(parsed),
            pixels=height * width,
            memory=parsed.memory_plan.bound or 0,
        )
        # Watched from before it can run, so that its result is counted sent or not.
        sent = self._watch(job, context)
        try:
            self.scheduler.submit(job)
        except SchedulerError as exc:
            self._unwatch(job)
            self.rejected(exc.code.lower(), context, exc.message)
            details = [] if exc.retry_after is None else [_retry_info(exc.retry_after)]
            context.abort_with_status(_status(grpc.StatusCode[exc.code], exc.message, details))
        # Fires on cancel, disconnect, deadline and normal end alike; stopping a finished job
        # is a no-op. A call that ended while the request was checked (the client cancelled,
        # its deadline passed) takes no callback: its job stops now, not after running for
        # no one.
        if not context.add_callback(lambda: self.scheduler.cancel(job, _stop_reason(context, job))):
            if self._unwatch(job):
                self._result_unsent(job)
            self.scheduler.cancel(job, _stop_reason(context, job))
            return
        yield from self._stream(job, parsed, context, sent)

    @staticmethod
    def _hold(claim: Claim, image: Any, context: grpc.ServicerContext) -> None:
        """Count a decoded image against the server's held memory (raising HeldFull), and
        stop decoding for a call that has ended (raising Cancelled): a request may hold 18
        large images, seconds each to decode."""
        if not context.is_active():
            raise Cancelled()
        claim.take(image.nbytes)

    def _stream(
        self, job: Job, parsed: convert.ParsedRequest, context: grpc.ServicerContext,
        sent: list[float],
    ) -> Iterator[pb.StylizeResponse]:  # fmt: skip
        try:
            for message in self._events(job, parsed, context):
                yield message
                sent[0] = time.monotonic()  # resumed: gRPC has sent it
                if message.HasField("result"):
                    with self._open_lock:
                        self._unsent.discard(job)
        finally:
            # However the stream ended (gRPC drops it when a message cannot be sent), the job
            # stops with it; stopping one that ended is a no-op.
            if self._unwatch(job):
                self._result_unsent(job)
            self.scheduler.cancel(job, _stop_reason(context, job))

    def _unwatch(self, job: Job) -> bool:
        """Stop watching ``job``'s stream (it has ended); whether its result was made and
        not sent."""
        with self._open_lock:
            self._open.pop(job, None)
            unsent = job in self._unsent
            self._unsent.discard(job)
        return unsent

    def _result_made(self, job: Job) -> None:
        """Before ``job``'s result goes into its outbox: its stream sends it, or counts it
        unsent when it ends first; a stream that has ended already counts it now."""
        with self._open_lock:
            if job in self._open:
                self._unsent.add(job)
                return
        self._result_unsent(job)

    def _result_unsent(self, job: Job) -> None:
        self.metrics.unsent.inc()
        log.warning(
            "job=%s client=%s: its result was made but not sent (the call had ended)",
            job.id, job.client,
        )  # fmt: skip

    def _watch(self, job: Job, context: grpc.ServicerContext) -> list[float]:
        """Watch ``job``'s stream; returns the box of when it last sent a message."""
        sent = [time.monotonic()]
        grace = self.config.unread_grace_seconds
        with self._open_lock:
            self._open[job] = (context, sent)
            if self._watchdog is None and grace > 0:
                self._watchdog = threading.Thread(
                    target=self._cancel_unread, args=(grace,), name="impasto-unread", daemon=True
                )
                self._watchdog.start()
        return sent

    def _cancel_unread(self, grace: float) -> None:
        """Cancel the calls whose job ended, and which have sent nothing, for more than
        ``grace`` seconds, their stream still open: a client that stopped reading (HTTP/2 flow
        control then holds the last messages) would keep a server thread for as long as it
        stays connected. One that reads slowly goes on: each message sent restarts its time."""
        while not self._closed.wait(min(1.0, grace / 4)):
            now = time.monotonic()
            with self._open_lock:
                stale = [(job, context) for job, (context, sent) in self._open.items()
                         if job.finished is not None
                         and now - max(job.finished, sent[0]) > grace]  # fmt: skip
                for job, _context in stale:
                    del self._open[job]
            for job, context in stale:
                log.warning(
                    "job=%s client=%s: its stream was not read for %.0fs after the job ended; "
                    "the call is cancelled", job.id, job.client, grace,
                )  # fmt: skip
                self.metrics.unread.inc()
                context.cancel()

    def _events(
        self, job: Job, parsed: convert.ParsedRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StylizeResponse]:
        while True:
            item = job.outbox.get(timeout=_POLL_SECONDS)
            if item is None:
                if not context.is_active():
                    self.scheduler.cancel(job, _stop_reason(context, job))
                    return
                continue
            if isinstance(item, QueuedUpdate):
                yield pb.StylizeResponse(
                    queued=pb.Queued(
                        job_id=job.id, position=item.position, queue_length=item.queue_length
                    )
                )
            elif isinstance(item, StartedEvent):
                yield pb.StylizeResponse(
                    started=pb.Started(
                        job_id=job.id,
                        device=self.engine.device,
                        total_iterations=item.total_iterations,
                        height=item.height,
                        width=item.width,
                        queued_seconds=job.queued_seconds,
                        batch_size=item.batch_size,
                    )
                )
            elif isinstance(item, Progress):
                yield pb.StylizeResponse(progress=self._progress_message(item, parsed))
            elif isinstance(item, Result):
                yield pb.StylizeResponse(
                    result=pb.Result(
                        job_id=job.id,
                        image=convert.image_message(item.image, parsed.output_format),
                        settings=convert.options_message(item.settings),
                        losses=item.losses,
                        elapsed_seconds=item.elapsed,
                        iterations=item.iterations,
                    )
                )
                return
            elif isinstance(item, Failure):
                # The ErrorInfo tells a client this status came from the server, not from a
                # broken connection, and why the job ended.
                info = error_details_pb2.ErrorInfo(reason=item.reason, domain=ERROR_DOMAIN)
                context.abort_with_status(_status(grpc.StatusCode[item.code], item.message, [info]))

    @staticmethod
    def _progress_message(event: Progress, parsed: convert.ParsedRequest) -> pb.Progress:
        message = pb.Progress(
            iteration=event.iteration,
            total_iterations=event.total,
            losses=event.losses,
            elapsed_seconds=event.elapsed,
            eta_seconds=event.eta,
            scale_index=event.scale_index,
            scale_count=event.scale_count,
        )
        if event.preview is not None:
            message.preview.CopyFrom(convert.image_message(event.preview, parsed.output_format))
        return message

    # ------------------------------------------------------------ the worker side
    def _batch_key(self, parsed: convert.ParsedRequest) -> Any:
        """Jobs with equal keys may share passes; None for a job that runs alone."""
        if self.config.max_batch <= 1:
            return None
        if parsed.options.optimizer != "adam" and not self.config.batch_lbfgs:
            return None
        return self.engine.batch_key(parsed.content, parsed.options)

    def _prepare(self, job: Job, claim: Claim) -> Any:
        """A job's host work before it runs (checks, its images as tensors): the scheduler
        may run it ahead, in a thread of its own, while the job waits. The float32 copies it
        makes of the images (12 bytes a pixel) count in ``claim`` too: the content's and the
        start image's until the job ends, the styles' while it is prepared (the engine lets
        them go then); already taken, they are counted, never refused."""
        parsed = job.payload
        kept = sum(PIXEL_BYTES * a.shape[0] * a.shape[1]
                   for a in (parsed.content, parsed.init_image) if a is not None)  # fmt: skip
        styles = sum(PIXEL_BYTES * s.shape[0] * s.shape[1] for s in parsed.styles)
        claim.add(kept + styles)
        try:
            return self.engine.prepare(
                parsed.content,
                parsed.styles,
                parsed.options,
                **parsed.engine_kwargs(),
                preview_every=parsed.preview_interval,
                preview_size=parsed.preview_size,
                should_stop=job.should_stop,
                memory=parsed.memory_plan,
            )
        finally:
            claim.add(-styles)

    def _run_batch(self, jobs: list[Job]) -> None:
        """Run one job, or several with one batch_key, in a scheduler worker; every outcome
        ends each job's outbox."""
        engine = self.engine
        started = time.monotonic()
        members: list[Job] = []
        prepared = []
        for job in jobs:
            try:
                if job.should_stop():
                    raise Cancelled()
                prepared.append(job.prepared())  # made ahead while it waited, or now
                members.append(job)
            except Exception as exc:  # noqa: BLE001 - reported to that job's client
                job.batch_size = 1  # it never ran with the others
                self._end(job, exc)
        for job, run in zip(members, prepared, strict=True):
            # The batch that runs: the log, the Started event and an out-of-memory message
            # all give this count.
            job.batch_size = len(members)
            plan = job.payload.memory_plan
            if plan is not None and plan.reduced:
                log.info(
                    "job=%s keeps %s L-BFGS pairs per stage (of %s) to fit %d MiB",
                    job.id, list(run.pairs), list(run.default_pairs), plan.capacity >> 20,
                )  # fmt: skip
            height, width = run.shapes[-1]  # the last stage is the result's size
            job.outbox.put(StartedEvent(run.options.iterations, height, width, len(members)))
        if members:
            self.metrics.batch_jobs.observe(len(members))
        ended: set[int] = set()
        pacing = ProgressPacing(self.config.progress_rate)
        try:
            budget = self.config.memory_budget_bytes
            # The simulated device memory is one slot's, whether it runs one job or a batch.
            limit = MemoryBudget(budget) if budget else contextlib.nullcontext()
            with limit:
                for index, event in engine.run_batch(prepared):
                    job = members[index]
                    if isinstance(event, Result):
                        job.description["done_iterations"] = event.iterations
                        self._result_made(job)
                        job.outbox.finish(event)
                        self._end(job, None)
                        ended.add(index)
                    elif isinstance(event, Progress):
                        job.description["done_iterations"] = event.iteration
                        if event.iteration >= SETTLED_AT and job.settled is None:
                            self.scheduler.settle(job)
                        # Plain progress is paced and may be coalesced; previews give way only
                        # to newer ones.
                        has_preview = event.preview is not None
                        if pacing.due(index, event, has_preview):
                            job.outbox.put(event, droppable=not has_preview, preview=has_preview)
                    else:
                        self._end(job, event)
                        ended.add(index)
        except Exception as exc:  # noqa: BLE001 - reported to every job still going
            for index, job in enumerate(members):
                if index not in ended:
                    self._end(job, exc)
        if len(jobs) > 1:
            log.info(
                "batch of %d jobs (%s) took %.2fs",
                len(jobs),
                ",".join(job.id for job in jobs),
                time.monotonic() - started,
            )

    def rejected(self, reason: str, context: grpc.ServicerContext, detail: str) -> None:
        """Count and log a request refused before it was queued (the client got the status)."""
        self.metrics.rejected(reason)
        log.info("refused client=%s reason=%s: %s", client_identity(context), reason, detail[:500])

    def _end(self, job: Job, error: BaseException | None) -> None:
        """Finish ``job``'s outbox for ``error`` (None: its result is already there), and
        record the outcome."""
        outcome = "ok"
        if isinstance(error, Cancelled):
            outcome = job.stop_reason or "cancelled"
            job.outbox.finish(stopped_failure(job.stop_reason))
        elif isinstance(error, EngineError):
            outcome = "invalid"
            job.outbox.finish(
                Failure("INVALID_ARGUMENT", f"{error.field}: {error.message}", "INVALID")
            )
        elif error is not None and is_out_of_memory(error):
            outcome = "out_of_memory"
            empty_cache()  # never while a pass is being recorded as a CUDA graph
            batch = f" (in a batch of {job.batch_size} jobs)" if job.batch_size > 1 else ""
            job.outbox.finish(
                Failure(
                    "RESOURCE_EXHAUSTED",
                    f"the device ran out of memory for a {job.description['size']} "
                    f"result{batch}; reduce size (or num_scales/scales), the number or size "
                    "of style images, or style_scale, or use bfloat16 precision on a GPU, or "
                    "the Adam optimizer (L-BFGS keeps up to 200 copies of the image)",
                    "OUT_OF_MEMORY",
                )
            )
        elif error is not None:
            outcome = "error"
            log.error("job=%s failed", job.id, exc_info=error)
            job.outbox.finish(
                Failure("INTERNAL", f"the job failed on the server: {error}", "INTERNAL")
            )
        self.scheduler.release(job)
        iterations = job.description.get("done_iterations", 0)
        duration = time.monotonic() - (job.started or time.monotonic())
        self.metrics.job_done(outcome, duration, iterations)
        _log_end(job, outcome, iterations, duration)

    def dropped(self, job: Job, reason: str) -> None:
        """Record a job that ended while queued (cancelled, its deadline, a shutdown)."""
        self.metrics.job_done(reason, None, 0)
        _log_end(job, reason, 0, 0.0)


def _log_end(job: Job, outcome: str, iterations: int, duration: float) -> None:
    """The job's line in the log, the same for every end."""
    log.info(
        "job=%s client=%s size=%s iterations=%d/%d styles=%d batch=%d queued=%.2fs "
        "duration=%.2fs outcome=%s",
        job.id,
        job.client,
        job.description.get("size"),
        iterations,
        job.description.get("iterations", 0),
        job.description.get("styles", 0),
        job.batch_size,
        job.queued_seconds,
        duration,
        outcome,
    )


def _stop_reason(context: grpc.ServicerContext, job: Job) -> str:
    if job.stop_reason is not None:
        return job.stop_reason
    if job.deadline is not None and time.monotonic() >= job.deadline - 0.05:
        return "deadline"
    return "cancelled"
