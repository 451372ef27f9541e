"""A small typed Python client for the impasto server (no torch needed).

with Client("127.0.0.1:50051") as client:
    job = client.stylize(content, [style], size=256, iterations=100)
    for event in job:
        ...
    image = job.result().image
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from impasto import images, wire
from impasto.v1 import style_transfer_pb2 as pb
from impasto.v1 import style_transfer_pb2_grpc as pb_grpc

SERVICE = "impasto.v1.StyleTransferService"
#: Large enough for a 4096x4096 RGB float32 image (192 MiB) plus the request around it.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class ImpastoError(Exception):
    """A failed call: the gRPC status code, the server's message, the offending fields
    (from google.rpc.BadRequest), a retry hint in seconds (from google.rpc.RetryInfo) and why a
    started job ended (google.rpc.ErrorInfo reason: SHUTDOWN, OUT_OF_MEMORY, CANCELLED,
    DEADLINE, INVALID, INTERNAL; None when the connection, not the server, ended the call), or
    TOO_LARGE for a job refused because it cannot fit the server's memory, with the ErrorInfo's
    ``metadata`` (needed_bytes, available_bytes, largest_height, largest_width)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: list[tuple[str, str]] | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.message = message
        self.field_violations = list(field_violations or [])
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.field_violations and not all(
            f"{f}: {d}" in self.message for f, d in self.field_violations
        ):
            text += " (" + "; ".join(f"{f}: {d}" for f, d in self.field_violations) + ")"
        if self.retry_after is not None:
            text += f" [retry after {self.retry_after:g} s]"
        return text

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ImpastoError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        violations: list[tuple[str, str]] = []
        retry_after: float | None = None
        reason: str | None = None
        metadata: dict[str, str] = {}
        try:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - a malformed status detail must not hide the real error
            status = None
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations += [(v.field, v.description) for v in bad.field_violations]
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    retry_after = info.retry_delay.ToTimedelta().total_seconds()
                elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    error_info = error_details_pb2.ErrorInfo()
                    detail.Unpack(error_info)
                    reason = error_info.reason or None
                    metadata = dict(error_info.metadata)
        return cls(
            code or grpc.StatusCode.UNKNOWN,
            message or "",
            violations,
            retry_after,
            reason,
            metadata,
        )


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Queued:
    job_id: str
    position: int  # 1 = starts next
    queue_length: int


@dataclass(frozen=True)
class Started:
    job_id: str
    device: str
    total_iterations: int
    height: int
    width: int
    queued_seconds: float
    batch_size: int = 1  # jobs sharing the device's passes with this one, itself included


@dataclass(frozen=True)
class Progress:
    iteration: int
    total_iterations: int
    losses: dict[str, float]
    elapsed_seconds: float
    eta_seconds: float
    scale_index: int
    scale_count: int
    preview: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Result:
    job_id: str
    image: np.ndarray = field(repr=False)
    settings: dict[str, Any]
    losses: dict[str, float]
    elapsed_seconds: float
    iterations: int


Event = Queued | Started | Progress | Result


@dataclass(frozen=True)
class ServerInfo:
    version: str
    device: str
    weights: str
    precision: str
    limits: dict[str, int | float]
    defaults: dict[str, Any]
    presets: dict[str, dict[str, Any]]
    allowed: dict[str, Any]
    queued_jobs: int
    running_jobs: int
    auth_required: bool
    #: Each iteration's pass replayed as a CUDA graph (a GPU server's default).
    cuda_graphs: bool = False
    #: The network's pass compiled by torch.compile, each shape in the background (--compile).
    compiled_network: bool = False
    #: What Stylize would make of this client's token: "not_needed", "missing", "accepted",
    #: "invalid" or "expired" ("" from a server that does not say).
    token: str = ""


def _event_of(message: pb.StylizeResponse) -> Event:
    kind = message.WhichOneof("event")
    if kind == "queued":
        q = message.queued
        return Queued(q.job_id, q.position, q.queue_length)
    if kind == "started":
        s = message.started
        return Started(
            s.job_id, s.device, s.total_iterations, s.height, s.width, s.queued_seconds,
            max(1, s.batch_size),
        )  # fmt: skip
    if kind == "progress":
        p = message.progress
        preview = images.from_wire(p.preview, field="preview") if p.HasField("preview") else None
        return Progress(
            p.iteration,
            p.total_iterations,
            dict(p.losses),
            p.elapsed_seconds,
            p.eta_seconds,
            p.scale_index,
            p.scale_count,
            preview,
        )
    if kind == "result":
        r = message.result
        return Result(
            r.job_id,
            images.from_wire(r.image, field="result.image"),
            wire.options_from_proto(r.settings),
            dict(r.losses),
            r.elapsed_seconds,
            r.iterations,
        )
    raise ImpastoError(grpc.StatusCode.INTERNAL, f"unknown event from the server: {kind!r}")


def server_info_of(message: pb.GetServerInfoResponse) -> ServerInfo:
    a = message.allowed
    allowed: dict[str, Any] = {
        "layers": list(a.layers),
        "presets": [wire.enum_name(wire.PRESETS, v) for v in a.presets],
        "inits": [wire.enum_name(wire.INITS, v) for v in a.inits],
        "optimizers": [wire.enum_name(wire.OPTIMIZERS, v) for v in a.optimizers],
        "poolings": [wire.enum_name(wire.POOLINGS, v) for v in a.poolings],
        "color_preservations": [
            wire.enum_name(wire.COLOR_PRESERVATIONS, v) for v in a.color_preservations
        ],
        "precisions": [wire.enum_name(wire.PRECISIONS, v) for v in a.precisions],
        "output_formats": [wire.enum_name(wire.OUTPUT_FORMATS, v) for v in a.output_formats],
    }
    for name in ("size", "iterations", "num_scales", "style_scale"):
        r = getattr(a, name)
        allowed[name] = (r.min, r.max) if name == "style_scale" else (int(r.min), int(r.max))
    limits = {f.name: value for f, value in message.limits.ListFields()}
    return ServerInfo(
        version=message.version,
        device=message.device,
        weights=message.weights,
        precision=wire.enum_name(wire.PRECISIONS, message.precision) or "",
        limits=limits,
        defaults=wire.options_from_proto(message.defaults),
        presets={
            wire.enum_name(wire.PRESETS, p.preset) or str(p.preset): wire.options_from_proto(
                p.options
            )
            for p in message.presets
        },
        allowed=allowed,
        queued_jobs=message.queued_jobs,
        running_jobs=message.running_jobs,
        auth_required=message.auth_required,
        cuda_graphs=message.cuda_graphs,
        compiled_network=message.compiled_network,
        token=wire.enum_name(wire.TOKEN_STATES, message.token) or "",
    )


# ---------------------------------------------------------------- jobs


class Job:
    """One running Stylize call: iterate it for events; ``cancel()`` stops it on the server."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._lock = threading.Lock()
        self._result: Result | None = None
        self._cancelled = False
        self.job_id: str | None = None

    def __iter__(self) -> Iterator[Event]:
        try:
            for message in self._call:
                event = _event_of(message)
                if isinstance(event, (Queued, Started)):
                    self.job_id = event.job_id
                if isinstance(event, Result):
                    self._result = event
                yield event
        except grpc.RpcError as error:
            failure = ImpastoError.from_rpc_error(error)
            lost = failure.code == grpc.StatusCode.UNAVAILABLE and failure.reason is None
            if lost and self.job_id is not None:
                # The server had the job and vanished mid-stream (killed, crashed, network
                # gone): say so plainly, keeping gRPC's own words for the logs.
                failure = ImpastoError(
                    failure.code,
                    f"lost the connection to the server during job {self.job_id} "
                    f"({failure.message}); the job did not finish, submit it again",
                    failure.field_violations,
                    failure.retry_after,
                )
            raise failure from None
        if self._result is None:
            raise ImpastoError(
                grpc.StatusCode.CANCELLED if self._cancelled else grpc.StatusCode.UNKNOWN,
                "the job was cancelled" if self._cancelled else "stream ended without a result",
            )

    def cancel(self) -> None:
        """Cancel the call; the server stops the job within one iteration. Thread-safe."""
        with self._lock:
            self._cancelled = True
            self._call.cancel()

    def result(self) -> Result:
        """Consume the remaining events and return the Result (raises ImpastoError)."""
        if self._result is None:
            for _ in self:
                pass
        assert self._result is not None
        return self._result


# ---------------------------------------------------------------- client


def _service_config(several: bool) -> str:
    config: dict[str, Any] = {
        "methodConfig": [
            {
                "name": [{"service": SERVICE}],
                # gRPC retries only until the first response arrives, so a job that has
                # started streaming is never run twice.
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    if several:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)


#: The server's port when an address names none (impasto-server's default), not gRPC's 443.
DEFAULT_PORT = 50051


def _with_port(address: str) -> str:
    """``host`` -> ``host:50051``, ``[v6]`` and a bare ``v6`` -> ``[v6]:50051`` (gRPC would
    take a bare one's last group for a port, or dial 443); URIs (``dns:``, ``ipv4:``,
    ``unix:``...) and ``host:port`` are left as they are."""
    address = address.strip()
    if not address:
        raise ValueError("no server address given")
    if ":" not in address or (address.startswith("[") and address.endswith("]")):
        return f"{address}:{DEFAULT_PORT}"
    try:
        return f"[{ipaddress.IPv6Address(address)}]:{DEFAULT_PORT}"
    except ValueError:  # not a bare IPv6 address
        pass
    host, _, port = address.rpartition(":")
    # host:port or [v6]:port (not a URI, not a bare IPv6 address): gRPC would take a port
    # above 65535 modulo 65536 and connect to another one
    plain = (":" not in host or host.startswith("[")) and "/" not in address
    if plain and port.isdigit() and not 1 <= int(port) <= 65535:
        raise ValueError(f"{address}: the port must lie in [1, 65535]")
    return address


def accepts_connections(address: str, timeout: float = 2.0) -> bool | None:
    """Whether a plain TCP connection to ``host[:port]`` opens. When gRPC cannot connect, it
    names only the last address it tried (for localhost often the IPv6 one, refused); this
    tells a server that answers but not as asked (TLS on one side only, a CA that did not sign
    its certificate) from none at all. None for URIs, lists and names that do not resolve."""
    try:
        address = _with_port(address)
    except ValueError:
        return None
    host, _, port = address.rpartition(":")
    if "/" in address or "," in address or (":" in host and not host.startswith("[")):
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (socket.gaierror, ValueError):  # gRPC's own message says the name did not resolve
        return None
    except OSError:
        return False


def _resolve_targets(target: str | Sequence[str]) -> tuple[str, bool, str | None]:
    """The channel target, whether it names several servers, and a TLS name override."""
    if isinstance(target, str):
        target = _with_port(target)
        several = target.startswith(("dns:", "ipv4:", "ipv6:")) and (
            target.startswith("dns:") or "," in target
        )
        return target, several, None
    addresses = [_with_port(address) for address in target]
    if not addresses:
        raise ValueError("no server address given")
    if len(addresses) == 1:
        return addresses[0], False, None
    # gRPC takes a list of addresses only as ipv4:/ipv6: URIs, so names are resolved here.
    v4: list[str] = []
    v6: list[str] = []
    first_host: str | None = None
    for address in addresses:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        first_host = first_host or host
        try:
            found = socket.getaddrinfo(host, int(port), 0, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) else exc
            raise ValueError(f"{address}: the name {host!r} does not resolve ({reason})") from None
        for family, *_rest, sockaddr in found:
            if family == socket.AF_INET:
                v4.append(f"{sockaddr[0]}:{sockaddr[1]}")
            elif family == socket.AF_INET6:
                v6.append(f"[{sockaddr[0]}]:{sockaddr[1]}")
    unique = list(dict.fromkeys(v4)) or list(dict.fromkeys(v6))
    scheme = "ipv4:" if v4 else "ipv6:"
    return scheme + ",".join(unique), True, first_host


class Client:
    """A connection to one impasto server, or to several replicas balanced round-robin."""

    def __init__(
        self,
        target: str | Sequence[str] = "127.0.0.1:50051",
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        server_name: str | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        channel_target, several, tls_name = _resolve_targets(target)
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            # Each Client gets its own connections (not gRPC's process-wide pool), so a server
            # without tokens can tell two clients of one process apart for fair scheduling.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.service_config", _service_config(several)),
            *channel_options,  # extra gRPC channel arguments, e.g. flow-control windows
        ]
        if (certificate_chain is None) != (private_key is None):
            # gRPC's core aborts the process on one without the other
            raise ValueError("certificate_chain and private_key go together (mutual TLS)")
        tls = tls or any(x is not None for x in (root_certificates, certificate_chain))
        if server_name or (tls and tls_name):
            options.append(("grpc.ssl_target_name_override", server_name or tls_name))
        if tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
            )
            self._channel = grpc.secure_channel(channel_target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(channel_target, options=options)
        self._stub = pb_grpc.StyleTransferServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.target = channel_target
        self.max_message_bytes = max_message_bytes

    # -- context manager
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- calls
    def server_info(self, timeout: float | None = 5.0) -> ServerInfo:
        try:
            response = self._stub.GetServerInfo(
                pb.GetServerInfoRequest(), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise ImpastoError.from_rpc_error(error) from None
        return server_info_of(response)

    def health(self, timeout: float | None = 2.0, service: str = "") -> str:
        """The grpc.health.v1 status: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN"."""
        # A hand-encoded HealthCheckRequest keeps grpcio-health-checking out of the client.
        check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda s: (b"\x0a" + _varint(len(s)) + s) if s else b"",
            response_deserializer=lambda b: b,
        )
        try:
            raw = check(service.encode(), timeout=timeout)
        except grpc.RpcError as error:
            raise ImpastoError.from_rpc_error(error) from None
        status = raw[1] if len(raw) >= 2 and raw[0] == 0x08 else 0
        return {1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(status, "UNKNOWN")

    def build_request(
        self,
        content: Any,
        styles: Any,
        *,
        style_weights: Sequence[float] | None = None,
        mask: Any = None,
        region_styles: Mapping[int, int] | None = None,
        init_image: Any = None,
        preview_interval: int = 0,
        preview_size: int = 0,
        output_format: str | None = None,
        input_format: str | None = None,
        **options: Any,
    ) -> pb.StylizeRequest:
        """The StylizeRequest that ``stylize`` sends (ValueError for bad client-side values)."""
        if isinstance(styles, (np.ndarray, str, bytes)) or not isinstance(styles, Sequence):
            styles = [styles]
        if style_weights is not None and len(style_weights) != len(styles):
            raise ValueError(
                f"style_weights has {len(style_weights)} entries for {len(styles)} styles"
            )
        request = pb.StylizeRequest(
            content=images.to_wire(content, input_format, field="content"),
            options=wire.options_to_proto(options),
            preview_interval=preview_interval,
            preview_size=preview_size,
        )
        for index, style in enumerate(styles):
            weight = float(style_weights[index]) if style_weights is not None else 0.0
            request.styles.add(
                image=images.to_wire(style, input_format, field=f"styles[{index}]"),
                weight=weight,
            )
        if mask is not None:
            if np.asarray(mask).dtype == np.bool_:
                mask = np.asarray(mask, dtype=np.uint8)  # labels: True is label 1, not 255
            request.mask.labels.CopyFrom(images.to_wire(mask, "raw", field="mask"))
            for label, style_index in (region_styles or {}).items():
                request.mask.regions.add(label=int(label), style_index=int(style_index))
        if init_image is not None:
            request.init_image.CopyFrom(
                images.to_wire(init_image, input_format, field="init_image")
            )
        if output_format is not None:
            if output_format not in wire.OUTPUT_FORMATS:
                raise ValueError(f"output_format must be one of {', '.join(wire.OUTPUT_FORMATS)}")
            request.output_format = wire.OUTPUT_FORMATS[output_format]
        return request

    def stylize(
        self, content: Any, styles: Any, *, timeout: float | None = None, **kwargs: Any
    ) -> Job:
        """Start one job and return it; iterate it for Queued, Started, Progress and Result.

        ``content``/``styles``: numpy arrays, PIL images, file paths or encoded bytes;
        ``kwargs``: style_weights, mask, region_styles, init_image, preview_interval,
        preview_size, output_format, input_format and any StyleOptions name (size,
        iterations, content_weight, style_layers={"conv1_1": 1.0}, init="noise", ...).
        """
        request = self.build_request(content, styles, **kwargs)
        return self.submit(request, timeout=timeout)

    def submit(self, request: pb.StylizeRequest, *, timeout: float | None = None) -> Job:
        """Send a ready-made StylizeRequest (ValueError for one larger than a message)."""
        size = request.ByteSize()
        if size > self.max_message_bytes:
            # gRPC would say only "Sent message larger than max" as the call's status
            raise ValueError(
                f"the request is {size / 2**20:.0f} MiB, above the "
                f"{self.max_message_bytes / 2**20:.0f} MiB a message may carry: downscale the "
                f"images, or send them as PNG or JPEG files rather than as pixels"
            )
        call = self._stub.Stylize(
            request,
            timeout=timeout if timeout is not None else self.timeout,
            metadata=self._metadata,
        )
        return Job(call)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
