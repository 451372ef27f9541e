"""Prometheus metrics, in a registry of their own so several servers can live in one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._http: Any = None
        r = self.registry
        self.queue_depth = Gauge("impasto_queue_depth", "Jobs waiting in the queue", registry=r)
        self.running = Gauge("impasto_running_jobs", "Jobs running on the device", registry=r)
        self.jobs = Counter("impasto_jobs", "Finished jobs by outcome", ["outcome"], registry=r)
        self.rejections = Counter(
            "impasto_rejected_requests", "Requests refused before queueing", ["reason"], registry=r
        )
        self.unread = Counter(
            "impasto_unread_streams",
            "Calls cancelled because their client had not read the stream's end some time "
            "after its job ended",
            registry=r,
        )
        self.unsent = Counter(
            "impasto_unsent_results",
            "Jobs that ended with a result that was never sent: their call had ended (the "
            "client cancelled or left, its deadline passed) or was cancelled unread",
            registry=r,
        )
        self.duration = Histogram(
            "impasto_job_duration_seconds",
            "Time a job ran on the device",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.batch_jobs = Histogram(
            "impasto_batch_jobs",
            "Jobs that ran together as one batch, one observation a batch (1: a job alone)",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.iterations_per_second = Gauge(
            "impasto_iterations_per_second", "Iterations per second of the last job", registry=r
        )
        self.device_memory = Gauge(
            "impasto_device_memory_bytes", "Memory allocated on the device", registry=r
        )
        self.cache_bytes = Gauge(
            "impasto_style_cache_bytes", "Bytes held by the style-target cache", registry=r
        )
        self.held_bytes = Gauge(
            "impasto_held_image_bytes",
            "Host memory held by requests' images from their arrival to their job's end",
            registry=r,
        )

    def watch_compiles(self, stats: Callable[[], dict[str, Any]]) -> None:
        """The engine's compiled pass shapes (``CompiledNet.stats``), for a server that
        compiles them."""
        gauges = (
            ("compiled", "impasto_compiled_pass_shapes",
             "Pass shapes the network runs compiled (torch.compile, --compile)"),
            ("waiting", "impasto_compile_waiting_shapes",
             "Pass shapes waiting for their compile, or compiling"),
            ("failed", "impasto_compile_failed_shapes",
             "Pass shapes whose compile failed (they run eagerly)"),
            ("seconds", "impasto_compile_seconds",
             "Seconds spent compiling pass shapes, all together"),
        )  # fmt: skip
        for key, name, text in gauges:
            gauge = Gauge(name, text, registry=self.registry)
            gauge.set_function(lambda key=key: float(stats()[key]))

    def watch(self, device_memory: Callable[[], float], cache_bytes: Callable[[], float]) -> None:
        self.device_memory.set_function(device_memory)
        self.cache_bytes.set_function(cache_bytes)

    def queue_changed(self, queued: int, running: int) -> None:
        self.queue_depth.set(queued)
        self.running.set(running)

    def job_done(self, outcome: str, seconds: float | None, iterations: int) -> None:
        """A job's end; ``seconds`` it ran on the device, None for one that never ran."""
        self.jobs.labels(outcome=outcome).inc()
        if seconds is None:
            return
        self.duration.observe(seconds)
        if seconds > 0 and iterations > 0:
            self.iterations_per_second.set(iterations / seconds)

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def serve(self, port: int, host: str) -> int:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_address[1]

    def close(self) -> None:
        """Stop serving the metrics (and free their port)."""
        server, self._http = self._http, None
        if server is not None:
            server.shutdown()
            server.server_close()
