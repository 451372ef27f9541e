"""The gRPC servicer: validate -> schedule -> stream."""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from impasto import __version__ as client_version
from impasto.v1 import style_transfer_pb2 as pb
from impasto.v1 import style_transfer_pb2_grpc as pb_grpc

from impasto_server import convert
from impasto_server.auth import client_identity
from impasto_server.engine import Cancelled, EngineError, Progress, Result
from impasto_server.memory_budget import MemoryBudget
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


@dataclass
class ServiceConfig:
    limits: convert.Limits
    queue_capacity: int
    max_running: int
    max_per_client: int
    max_message_bytes: int
    auth_required: bool = False
    #: When set, each job's tensors may use at most this many bytes (a simulated device
    #: memory, to exercise out-of-memory handling where there is no GPU to fill).
    memory_budget_bytes: int | None = None


@dataclass(frozen=True)
class StartedEvent:
    total_iterations: int
    height: int
    width: int


def _status(code: grpc.StatusCode, message: str, details: list[Any] | None = None) -> grpc.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details or []:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


def bad_request(violations: list[tuple[str, str]]) -> grpc.Status:
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in violations
        ]
    )
    summary = "; ".join(f"{f}: {d}" for f, d in violations[:3])
    return _status(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {summary}", [detail])


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


class StyleTransferService(pb_grpc.StyleTransferServiceServicer):
    """Serves Stylize and GetServerInfo on top of one Engine and one Scheduler."""

    def __init__(self, config: ServiceConfig, scheduler: Scheduler, metrics: Metrics) -> None:
        self.config = config
        self.scheduler = scheduler
        self.metrics = metrics
        self.engine: Any = None  # set once the weights are loaded
        self.accepting = True

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
                max_input_pixels=limits.max_input_pixels,
            ),
            queued_jobs=self.scheduler.queued,
            running_jobs=self.scheduler.running,
            auth_required=self.config.auth_required,
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

    # ------------------------------------------------------------ Stylize
    def Stylize(
        self, request: pb.StylizeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StylizeResponse]:
        engine = self.engine
        if engine is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")
        if not self.accepting:
            # Only a call that arrived just as the drain closed the transport gets here; with
            # no retry pushback, gRPC's retry policy may send it to another replica.
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        try:
            parsed = convert.parse_request(
                request, self.config.limits, default_precision=engine.default_precision
            )
            engine.validate(parsed.content, parsed.styles, parsed.options, **parsed.engine_kwargs())
            height, width = engine.output_shape(parsed.content, parsed.options)
            # The server's own limit may be tighter than the (possibly shared) engine's.
            if height * width > self.config.limits.max_pixels:
                raise EngineError(
                    "size",
                    f"the result would be {height}x{width} = {height * width} pixels, above "
                    f"this server's limit of {self.config.limits.max_pixels}",
                )
        except convert.RequestError as exc:
            self.metrics.rejected("invalid")
            context.abort_with_status(bad_request(exc.violations))
        except EngineError as exc:
            self.metrics.rejected("invalid")
            context.abort_with_status(bad_request([(convert.wire_field(exc.field), exc.message)]))

        client = client_identity(context)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        job = Job(
            client=client,
            work=lambda job: self._run(job, parsed),
            deadline=deadline,
            description={
                "size": f"{height}x{width}",
                "iterations": parsed.options.iterations,
                "styles": len(parsed.styles),
            },
        )
        try:
            self.scheduler.submit(job)
        except SchedulerError as exc:
            self.metrics.rejected(exc.code.lower())
            details = []
            if exc.retry_after is not None:
                delay = duration_pb2.Duration()
                delay.FromTimedelta(datetime.timedelta(seconds=exc.retry_after))
                details.append(error_details_pb2.RetryInfo(retry_delay=delay))
            context.abort_with_status(_status(grpc.StatusCode[exc.code], exc.message, details))
        # Fires on cancel, disconnect, deadline and normal end alike; stopping a finished job
        # is a no-op.
        context.add_callback(lambda: self.scheduler.cancel(job, _stop_reason(context, job)))
        yield from self._stream(job, parsed, context)

    def _stream(
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
    def _run(self, job: Job, parsed: convert.ParsedRequest) -> None:
        """Run one job in a scheduler worker; every outcome ends the job's outbox."""
        engine = self.engine
        outcome = "ok"
        try:
            if job.should_stop():
                raise Cancelled()
            height, width = engine.output_shape(parsed.content, parsed.options)
            job.outbox.put(StartedEvent(parsed.options.iterations, height, width))
            budget = self.config.memory_budget_bytes
            with MemoryBudget(budget) if budget else contextlib.nullcontext():
                self._optimise(job, parsed)
        except Cancelled:
            outcome = job.stop_reason or "cancelled"
            job.outbox.finish(stopped_failure(job.stop_reason))
        except EngineError as exc:
            outcome = "invalid"
            job.outbox.finish(Failure("INVALID_ARGUMENT", f"{exc.field}: {exc.message}", "INVALID"))
        except Exception as exc:
            if _is_out_of_memory(exc):
                outcome = "out_of_memory"
                _free_device_memory()
                job.outbox.finish(
                    Failure(
                        "RESOURCE_EXHAUSTED",
                        f"the device ran out of memory for a {job.description['size']} result; "
                        "reduce size (or num_scales/scales), the number or size of style "
                        "images, or style_scale, or use bfloat16 precision on a GPU",
                        "OUT_OF_MEMORY",
                    )
                )
            else:
                outcome = "error"
                log.exception("job=%s failed", job.id)
                job.outbox.finish(
                    Failure("INTERNAL", f"the job failed on the server: {exc}", "INTERNAL")
                )
        finally:
            iterations = job.description.get("done_iterations", 0)
            duration = time.monotonic() - (job.started or time.monotonic())
            self.metrics.job_done(outcome, duration, iterations)
            log.info(
                "job=%s client=%s size=%s iterations=%d/%d styles=%d queued=%.2fs "
                "duration=%.2fs outcome=%s",
                job.id,
                job.client,
                job.description.get("size"),
                iterations,
                parsed.options.iterations,
                len(parsed.styles),
                job.queued_seconds,
                duration,
                outcome,
            )

    def _optimise(self, job: Job, parsed: convert.ParsedRequest) -> None:
        """Iterate the engine, feeding the outbox; records the iterations done."""
        engine = self.engine
        for event in engine.run(
            parsed.content,
            parsed.styles,
            parsed.options,
            **parsed.engine_kwargs(),
            preview_every=parsed.preview_interval,
            preview_size=parsed.preview_size,
            should_stop=job.should_stop,
        ):
            if isinstance(event, Result):
                job.description["done_iterations"] = event.iterations
                job.outbox.finish(event)
            else:
                job.description["done_iterations"] = event.iteration
                # Plain progress may be coalesced; previews give way only to newer ones.
                has_preview = event.preview is not None
                job.outbox.put(event, droppable=not has_preview, preview=has_preview)


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _stop_reason(context: grpc.ServicerContext, job: Job) -> str:
    if job.stop_reason is not None:
        return job.stop_reason
    if job.deadline is not None and time.monotonic() >= job.deadline - 0.05:
        return "deadline"
    return "cancelled"
