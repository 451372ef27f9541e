"""The server process: gRPC server, TLS, tokens, health, reflection, metrics, shutdown."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# gRPC's core writes a line of its own on stderr, at INFO, for each failed TLS handshake (any
# plaintext client or port scanner); it reads its verbosity when grpc is imported. Its errors
# still show; GRPC_VERBOSITY=INFO brings the rest back.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from impasto.v1 import style_transfer_pb2 as pb
from impasto.v1 import style_transfer_pb2_grpc as pb_grpc

from impasto_server import __version__
from impasto_server.auth import TokenAuthInterceptor, TokenStore
from impasto_server.convert import Limits
from impasto_server.decoding import DecodeGuardInterceptor
from impasto_server.held import default_capacity as default_held_capacity
from impasto_server.metrics import Metrics
from impasto_server.scheduler import Scheduler
from impasto_server.service import ServiceConfig, StyleTransferService

log = logging.getLogger("impasto_server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StyleTransferService"].full_name
#: 256 MiB: a 4096x4096 RGB float32 image is 192 MiB raw, plus the rest of the request.
DEFAULT_MAX_MESSAGE_MB = 256
#: How long stopped jobs may take to end after the grace period.
_STOP_MARGIN_SECONDS = 10.0


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    port_file: str | None = None
    device: str | None = None
    weights: str = "original"
    max_pixels: int = 4096 * 4096
    queue_size: int = 32
    #: Jobs, or batches of jobs, optimised at once; above 1, only while their memory bounds
    #: fit the device together (scheduler.py).
    max_running: int = 1
    #: Jobs batched together at most; None: 8 on a GPU, 1 (no batching) on a CPU, where a
    #: batch costs more per job than running its jobs one after another.
    max_batch: int | None = None
    max_batch_megapixels: float = 4.0
    #: How long a job that could batch may wait for others sent at about the same time.
    batch_wait_ms: float = 20.0
    batch_lbfgs: bool = False
    max_jobs_per_client: int = 8
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB
    max_styles: int = 16
    max_regions: int = 64
    cache_mb: int = 256
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    token_file: str | None = None
    metrics_port: int | None = None
    grace_seconds: float = 30.0
    log_level: str = "INFO"
    simulated_memory_mb: float | None = None
    #: Memory one job may use, MiB; None: what the device had free at start (less the cache
    #: and headroom), or the simulated memory when set; 0: jobs are not checked.
    job_memory_mb: float | None = None
    #: Each iteration's pass through the network replayed as a CUDA graph; None: on a GPU.
    cuda_graphs: bool | None = None
    #: The network's pass compiled by torch.compile for each new pass shape, in the
    #: background while that shape's passes run eagerly (engine/compiled.py). Off unless asked
    #: for: on an H200, once a server's shapes were compiled, 16 clients' jobs a minute were
    #: 1.07 to 1.25x and one client's 0.99 to 1.14x, but while it compiled the shapes of jobs
    #: of three new sizes (36 s of compiles) its jobs a minute fell to 0.23x (docs/benchmarks.md,
    #: runs 9 to 12). It pays where jobs repeat a few sizes; on a CPU it does not pay at all.
    compile: bool = False
    #: Plain progress events sent per second per job at most; 0: every iteration's.
    progress_rate: float = 20.0
    #: Waiting jobs whose host work is done ahead, while the device runs others; None: one
    #: batch's (max_batch); 0: none.
    prepare_ahead: int | None = None
    #: Threads that prepare those jobs, each a different job.
    prepare_threads: int = 1
    #: Seconds a job's stream may send nothing once the job ended before its call is
    #: cancelled (a client that stopped reading would hold a server thread); 0: never.
    unread_grace_seconds: float = 60.0
    #: Host memory, MiB, that requests' images may hold from their arrival to their job's
    #: end, all together; None: a quarter of the host's memory or of the
    #: container's limit, whichever is lower; 0: no limit.
    max_held_mb: int | None = None


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

#: The batch size a GPU server uses unless told otherwise. 16 clients' 256 px jobs batched up to
#: 16 ran 1.10, 1.10 and 0.95x the jobs a minute of batches up to 8 in three H200 runs
#: (benchmarks/gpu.py, docs/benchmarks.md): no clear gain for the longer wait of each job.
GPU_MAX_BATCH = 8


# Health watches open at once (each a client's or a load balancer's stream, held open): past
# this many a new one is refused RESOURCE_EXHAUSTED (Check still answers).
HEALTH_WATCHES = 64


class _Health(health.HealthServicer):
    """grpcio-health-checking's servicer with its open watches counted and bounded, and a
    closing watch's bookkeeping done off gRPC's polling thread.

    Its ``set`` (and ``Watch``) sends each watch its message while holding the servicer's
    lock and waits for the send to complete, which gRPC's one polling thread completes; that
    thread also runs the callback of a watch that closes, which takes the same lock. A status
    set while a watch closed therefore hung both for good: a shutdown (NOT_SERVING) right
    after a client closed its watches never returned (tests/server/test_lifecycle.py's
    watches test, once under load). The callback now runs in a thread of its own."""

    def __init__(self, watches: int) -> None:
        super().__init__()
        self._watches = threading.BoundedSemaphore(watches)
        self._limit = watches

    def Watch(self, request: Any, context: Any, send_response_callback: Any = None) -> Any:
        if not self._watches.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._limit} health watches are open on this server; use Check, or retry",
            )
        if not context.add_callback(self._watches.release):
            self._watches.release()  # the call had already ended
        return super().Watch(request, context, send_response_callback)

    def _on_close_callback(self, send_response_callback: Any, service: str) -> Any:
        close = super()._on_close_callback(send_response_callback, service)

        def callback() -> None:  # on gRPC's polling thread: must not wait for the lock
            threading.Thread(target=close, name="impasto-health-close", daemon=True).start()

        return callback


def resolve_max_batch(config: ServerConfig, engine: Any = None) -> int:
    if config.max_batch is not None:
        return config.max_batch
    if engine is not None:
        device = str(engine.device)
    elif config.device:
        device = config.device
    else:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return GPU_MAX_BATCH if device.startswith("cuda") else 1


def default_engine(config: ServerConfig) -> Any:
    from impasto_server.engine import Engine

    return Engine(
        device=config.device,
        weights=config.weights,
        max_pixels=config.max_pixels,
        cache_bytes=config.cache_mb << 20,
        cuda_graphs=config.cuda_graphs,
        compile_net=config.compile,
    )


class Server:
    """One impasto server: ``start()`` listens (health NOT_SERVING), ``load()`` brings the
    model up (health SERVING), ``shutdown()`` drains it."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        engine: Any = None,
        engine_factory: Callable[[ServerConfig], Any] | None = None,
    ) -> None:
        self.config = config
        self._engine = engine
        self._engine_factory = engine_factory or default_engine
        self.metrics = Metrics()
        max_batch = resolve_max_batch(config, engine)
        max_batch_pixels = int(config.max_batch_megapixels * (1 << 20))
        self.scheduler = Scheduler(
            queue_capacity=config.queue_size,
            max_running=config.max_running,
            max_per_client=config.max_jobs_per_client,
            max_batch=max_batch,
            max_batch_pixels=max_batch_pixels,
            memory_capacity=lambda: self.service.job_memory(),
            stagger=True,  # with --max-running above 1 (see the scheduler)
            batch_wait=config.batch_wait_ms / 1000.0,
            prepare_ahead=max_batch if config.prepare_ahead is None else config.prepare_ahead,
            prepare_threads=config.prepare_threads,
            on_change=lambda s: self.metrics.queue_changed(s.queued, s.running),
            on_dropped=lambda job, reason: self.service.dropped(job, reason),
        )
        held_bytes = (
            default_held_capacity() if config.max_held_mb is None else config.max_held_mb << 20
        )
        # Re-read when the file changes: tokens are added or revoked without a restart.
        tokens = TokenStore(config.token_file) if config.token_file else None
        self.service = StyleTransferService(
            ServiceConfig(
                limits=Limits(
                    max_pixels=config.max_pixels,
                    max_input_pixels=max(config.max_pixels, 8192 * 8192),
                    max_styles=config.max_styles,
                    max_regions=config.max_regions,
                ),
                queue_capacity=config.queue_size,
                max_running=config.max_running,
                max_per_client=config.max_jobs_per_client,
                max_batch=max_batch,
                max_batch_pixels=max_batch_pixels,
                batch_lbfgs=config.batch_lbfgs,
                max_message_bytes=config.max_message_mb << 20,
                tokens=tokens,
                memory_budget_bytes=int(config.simulated_memory_mb * (1 << 20))
                if config.simulated_memory_mb
                else None,
                job_memory_bytes=_job_memory_bytes(config),
                progress_rate=config.progress_rate,
                unread_grace_seconds=config.unread_grace_seconds,
                max_held_bytes=held_bytes,
            ),
            self.scheduler,
            self.metrics,
        )
        self.metrics.held_bytes.set_function(lambda: self.service.held.held)
        self.health = _Health(HEALTH_WATCHES)
        self._tokens = tokens
        self._grpc: grpc.Server | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()
        self._hurry = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def start(self) -> int:
        """Listen on the port (health NOT_SERVING until ``load``); return the port."""
        config = self.config
        message_bytes = config.max_message_mb << 20
        # Every waiting or running stream holds a thread; leave room for info and health calls.
        # Health watches hold none, but each counts as an open call: room of their own, so
        # that clients' and balancers' watches never take a job's or a check's place.
        # A running slot runs a batch: up to max_batch jobs, each with its stream.
        running = config.max_running * max(1, self.service.config.max_batch)
        workers = config.queue_size + running + 16
        # Tokens first: a refused peer's request is never decoded.
        interceptors: list[grpc.ServerInterceptor] = [DecodeGuardInterceptor()]
        if self._tokens is not None:
            refused = functools.partial(self.service.rejected, "unauthenticated")
            interceptors.insert(0, TokenAuthInterceptor(self._tokens, on_refused=refused))
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="impasto-rpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", message_bytes),
                ("grpc.max_receive_message_length", message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=workers + HEALTH_WATCHES,
        )
        pb_grpc.add_StyleTransferServiceServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            server,
        )  # fmt: skip
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        bind = f"{config.host}:{config.port}"
        if config.host and ":" in config.host and not config.host.startswith("["):
            bind = f"[{config.host}]:{config.port}"
        try:
            if config.tls_cert or config.tls_key:
                credentials = _tls_credentials(config)
                self.port = server.add_secure_port(bind, credentials)
            else:
                self.port = server.add_insecure_port(bind)
        except RuntimeError as exc:  # grpc's text points at GRPC_VERBOSITY, not at the cause
            raise OSError(
                f"cannot listen on {bind}: the port is in use, or the address is not one of "
                "this machine's"
            ) from exc
        if not self.port:
            raise OSError(f"cannot listen on {bind}")
        server.start()
        self._grpc = server
        if config.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(config.metrics_port, config.host)
            except OSError as exc:
                server.stop(None)
                raise OSError(
                    f"--metrics-port {config.metrics_port}: cannot listen on "
                    f"{config.host}:{config.metrics_port}: {exc.strerror or exc}"
                ) from exc
        if config.port_file:
            # Written only after binding, so whoever reads it can connect at once.
            tmp = Path(config.port_file).with_suffix(".tmp")
            try:
                tmp.write_text(str(self.port))
                tmp.replace(config.port_file)
            except OSError as exc:
                server.stop(None)
                raise OSError(f"--port-file {config.port_file}: {exc.strerror or exc}") from exc
        metrics = f", metrics on port {self.metrics_port}" if self.metrics_port else ""
        log.info(
            "listening on %s:%d (tls=%s, tokens=%s%s)",
            config.host,
            self.port,
            bool(config.tls_cert),
            self._tokens is not None,
            metrics,
        )
        return self.port

    def load(self) -> None:
        """Load the weights (or take the given engine), then report SERVING."""
        engine = self._engine if self._engine is not None else self._engine_factory(self.config)
        self._engine = engine
        self.metrics.watch(_device_memory(engine), lambda: engine.cache_stats().get("bytes", 0))
        compiled = getattr(engine, "compiled", None)
        if compiled is not None:
            self.metrics.watch_compiles(compiled.stats)
        self.service.engine = engine
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "ready: impasto %s, device=%s, weights=%s, precision=%s, cuda_graphs=%s, compile=%s",
            __version__,
            engine.device,
            engine.weights_name,
            engine.default_precision,
            engine.cuda_graphs,
            compiled is not None,
        )

    def shutdown(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, stop taking calls, let running jobs finish for ``grace`` seconds,
        then stop them (their clients get UNAVAILABLE) and close.

        The transport stops taking calls first (the listening port closes and every connection
        gets an HTTP/2 GOAWAY), so a balancing client sends its next calls to another replica
        (a retry of a call refused here goes elsewhere too); running streams go on over their
        connections until they end."""
        if self._stopped.is_set():
            return
        grace = self.config.grace_seconds if grace is None else grace
        log.info("shutting down: waiting up to %.0fs for running jobs", grace)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._grpc is not None:
            # Calls still open past the grace and the jobs' stop are cancelled; the smaller
            # grace of the second stop() below normally wins.
            self._grpc.stop(grace + _STOP_MARGIN_SECONDS)
        self.service.accepting = False
        running = self.scheduler.close()
        if running and not self._idle_within(grace):
            for job in self.scheduler.running_jobs():
                job.request_stop("shutdown")
            self.scheduler.wait_idle(_STOP_MARGIN_SECONDS)
        if self._grpc is not None:
            # A moment for the streams to deliver their last message or status; open health
            # Watch streams are cancelled then.
            self._grpc.stop(2.0).wait()
        self.metrics.close()
        self.service.close()
        self._stopped.set()
        log.info("stopped")

    def hurry(self) -> None:
        """End a shutdown's grace now: its running jobs are stopped (a second SIGTERM)."""
        self._hurry.set()

    def _idle_within(self, grace: float) -> bool:
        """Whether the running jobs end within ``grace`` seconds and before ``hurry``."""
        end = time.monotonic() + grace
        while not self._hurry.is_set():
            left = end - time.monotonic()
            if self.scheduler.wait_idle(min(0.2, max(left, 0.0))):
                return True
            if left <= 0:
                return False
        return False

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


def _job_memory_bytes(config: ServerConfig) -> int | None:
    megabytes = config.job_memory_mb
    if megabytes is None:
        megabytes = config.simulated_memory_mb
    return None if megabytes is None else int(megabytes * (1 << 20))


def _device_memory(engine: Any) -> Callable[[], float]:
    def read() -> float:
        if str(engine.device).startswith("cuda"):
            import torch

            return float(torch.cuda.memory_allocated(engine.device))
        return 0.0

    return read


# ---------------------------------------------------------------- the command


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    d = ServerConfig()
    p = argparse.ArgumentParser(
        prog="impasto-server",
        description="Serve Gatys neural style transfer over gRPC with one warm VGG19.",
    )
    p.add_argument("--host", default=d.host, help="address to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=d.port, help="port (0 picks a free one)")
    p.add_argument("--port-file", help="write the port here once listening")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--weights", default=d.weights, help="original, torchvision or a .pt path")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest result, pixels")
    p.add_argument("--queue-size", type=int, default=d.queue_size, help="jobs that may wait")
    p.add_argument(
        "--max-running", type=int, default=d.max_running,
        help="jobs (or batches of jobs) optimised at once; above 1, only while their memory "
        "fits the device together (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--max-batch", type=int,
        help="queued jobs of one shape that run as one batch, sharing each pass through the "
        f"network (default: {GPU_MAX_BATCH} on a GPU, 1 = no batching on a CPU)",
    )  # fmt: skip
    p.add_argument(
        "--max-batch-megapixels", type=float, default=d.max_batch_megapixels,
        help="most pixels one batch may hold, in units of 2**20 pixels",
    )  # fmt: skip
    p.add_argument(
        "--batch-wait-ms", type=float, default=d.batch_wait_ms,
        help="how long a job that could batch may wait for others sent at about the same "
        "time, when batching is on",
    )  # fmt: skip
    p.add_argument(
        "--batch-lbfgs", action="store_true",
        help="batch L-BFGS jobs too (their results are as good, but not equal to float "
        "tolerance to running alone); by default only Adam jobs batch",
    )  # fmt: skip
    p.add_argument(
        "--max-jobs-per-client", type=int, default=d.max_jobs_per_client,
        help="jobs one client may have queued or running",
    )  # fmt: skip
    p.add_argument(
        "--max-message-mb", type=int, default=d.max_message_mb,
        help="largest gRPC message in MiB (default fits a 4096x4096 RGB float32 image)",
    )  # fmt: skip
    p.add_argument(
        "--max-held-mb", type=int,
        help="host memory, MiB, that requests' images (decoded at full size, and their jobs' "
        "float32 copies) may hold from "
        "their arrival to their job's end, all together: a request past it is refused with "
        "RESOURCE_EXHAUSTED and a retry hint unless it is the oldest the server holds, so one "
        "alone is always taken (default: a quarter "
        "of the host's memory, or of the container's limit where lower; 0: no limit)",
    )  # fmt: skip
    p.add_argument("--max-styles", type=int, default=d.max_styles, help="style images per job")
    p.add_argument(
        "--max-regions", type=int, default=d.max_regions,
        help="mask regions per job (each costs memory, and time to check it)",
    )  # fmt: skip
    p.add_argument("--cache-mb", type=int, default=d.cache_mb, help="style-target cache budget")
    p.add_argument("--tls-cert", help="PEM certificate chain; enables TLS with --tls-key")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--tls-client-ca", help="PEM CA bundle; clients must present a certificate")
    p.add_argument("--token-file", help="file of accepted bearer tokens, one per line")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument(
        "--grace-seconds", type=float, default=d.grace_seconds,
        help="on SIGTERM, how long running jobs may finish before they are stopped",
    )  # fmt: skip
    p.add_argument("--log-level", default=d.log_level, help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--simulated-memory-mb", type=float,
        help="testing aid: fail a job whose tensors exceed this many MiB as a device "
        "out-of-memory would (exercises that path on a CPU)",
    )  # fmt: skip
    p.add_argument(
        "--job-memory-mb", type=float,
        help="memory one job may use, MiB: a job whose estimated peak is larger is refused "
        "before it is queued (default: what the device has free at start, less the cache and "
        "some headroom; 0: no check)",
    )  # fmt: skip
    p.add_argument(
        "--cuda-graphs", action=argparse.BooleanOptionalAction,
        help="replay each iteration's pass through the network as a CUDA graph, recorded "
        "once per batch and stage (default: on with a GPU; a GPU only)",
    )  # fmt: skip
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=d.compile,
        help="compile the network's pass with torch.compile for each new pass shape (image "
        "size, stage, batch of one or more), in a background thread while that shape's "
        "passes run as before; seconds of compile per shape, during which jobs run slower, "
        "then faster passes on a GPU: for servers whose jobs repeat a few sizes (default: "
        "off)",
    )  # fmt: skip
    p.add_argument(
        "--progress-rate", type=float, default=d.progress_rate,
        help="progress events sent per second per job at most (a job's first and last "
        "iteration, each stage's first and each preview always go; 0: every iteration)",
    )  # fmt: skip
    p.add_argument(
        "--prepare-ahead", type=int,
        help="waiting jobs whose host work (checks, images to tensors) is done ahead, while "
        "the device runs others (default: one batch's, --max-batch; 0: none)",
    )  # fmt: skip
    p.add_argument(
        "--prepare-threads", type=int, default=d.prepare_threads,
        help="threads that prepare those jobs, each a different one; more can keep a fast "
        "device fed when clients send large photographs (default: %(default)s)",
    )  # fmt: skip
    args = p.parse_args(argv)
    config = ServerConfig(**{k: v for k, v in vars(args).items()})
    # Each value within what the server can hold: GetServerInfo's Limits are uint32 and uint64
    # fields (a larger value failed every call), gRPC's message limit an int32 of bytes; NaN
    # and infinities are outside every range.
    uint32 = 2**32 - 1
    for flag, value, low, high in (
        ("--queue-size", config.queue_size, 1, uint32),
        ("--max-running", config.max_running, 1, uint32),
        ("--max-jobs-per-client", config.max_jobs_per_client, 1, uint32),
        ("--max-styles", config.max_styles, 1, uint32),
        ("--max-regions", config.max_regions, 1, uint32),
        ("--max-pixels", config.max_pixels, 1, 2**62),
        ("--max-message-mb", config.max_message_mb, 1, 2047),
        ("--max-batch", config.max_batch, 1, uint32),
        ("--prepare-ahead", config.prepare_ahead, 0, uint32),
        ("--prepare-threads", config.prepare_threads, 1, 1024),
        ("--cache-mb", config.cache_mb, 0, 2**40),
        ("--max-held-mb", config.max_held_mb, 0, 2**40),
        ("--job-memory-mb", config.job_memory_mb, 0, 2**40),
        ("--simulated-memory-mb", config.simulated_memory_mb, 0, 2**40),
        ("--max-batch-megapixels", config.max_batch_megapixels, 0, 2**40),
        ("--grace-seconds", config.grace_seconds, 0, 10**6),
        ("--progress-rate", config.progress_rate, 0, 10_000),
        ("--batch-wait-ms", config.batch_wait_ms, 0, 10_000),
    ):
        if value is not None and not low <= value <= high:
            p.error(f"{flag} must lie in [{low}, {high}], got {value}")
    for flag, value in (
        ("--max-batch-megapixels", config.max_batch_megapixels),
        ("--simulated-memory-mb", config.simulated_memory_mb),
    ):
        if value == 0:
            p.error(f"{flag} must be > 0")
    if config.log_level.upper() not in LOG_LEVELS:
        p.error(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {config.log_level}")
    if bool(config.tls_cert) != bool(config.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if config.tls_client_ca and not config.tls_cert:
        # without them the port would be plaintext, and no client certificate asked for
        p.error("--tls-client-ca needs --tls-cert and --tls-key (TLS) as well")
    # gRPC takes a port above 65535 modulo 65536 and listens there without a word
    for flag, port in (("--port", config.port), ("--metrics-port", config.metrics_port)):
        if port is not None and not 0 <= port <= 65535:
            p.error(f"{flag} must lie in [0, 65535] (0 picks a free one), got {port}")
    return config


def _tls_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    """gRPC's credentials from the PEM files, each checked first with Python's ssl: gRPC only
    says that it could not bind the port when one is not what it should be."""
    if not (config.tls_cert and config.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    for flag, path in (
        ("--tls-cert", config.tls_cert),
        ("--tls-key", config.tls_key),
        ("--tls-client-ca", config.tls_client_ca),
    ):
        if path and not Path(path).is_file():
            raise ValueError(f"{flag} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # password b"": an encrypted key fails here instead of prompting on the terminal
        context.load_cert_chain(config.tls_cert, config.tls_key, password=b"")
    except ssl.SSLError as exc:
        raise ValueError(
            f"--tls-cert {config.tls_cert} and --tls-key {config.tls_key} are not a PEM "
            f"certificate chain and its unencrypted private key ({exc.reason or exc})"
        ) from exc
    client_ca = None
    if config.tls_client_ca:
        try:
            context.load_verify_locations(cafile=config.tls_client_ca)
        except ssl.SSLError as exc:
            raise ValueError(
                f"--tls-client-ca {config.tls_client_ca} holds no PEM certificate "
                f"({exc.reason or exc})"
            ) from exc
        client_ca = Path(config.tls_client_ca).read_bytes()
    return grpc.ssl_server_credentials(
        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    stop = threading.Event()
    started: list[Server] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not stop.is_set():
            log.info("received %s", signal.Signals(signum).name)
            stop.set()
        elif started:  # a second signal: the operator will not wait for the grace
            log.info(
                "received %s again: stopping the running jobs now", signal.Signals(signum).name
            )
            started[0].hurry()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = Server(config)
        started.append(server)
        server.start()
    except (OSError, ValueError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    try:
        server.load()
    except Exception as exc:  # noqa: BLE001 - report any load failure as a clear message
        log.error("cannot load the model: %s", exc)
        server.shutdown(0)
        return 2
    stop.wait()
    server.shutdown()
    # Everything is stopped, the logs flushed: the process ends here, without the interpreter's
    # teardown, in which a thread of a C++ extension's could still be running (gRPC's, torch's)
    # and abort the exit ("terminate called without an active exception", status -6 instead
    # of 0, in about 1 of 15 SIGTERMs under load).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
