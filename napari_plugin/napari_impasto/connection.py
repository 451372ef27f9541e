"""Which server the widget talks to: an embedded local one, or a remote address.

Local mode shares one ``LocalServer`` child process per napari process: it starts on first use
(from a worker thread, since loading the weights takes seconds) and stops when the last widget
using it goes away, or at interpreter exit at the latest.
"""

from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from impasto.client import Client, ImpastoError, accepts_connections
from impasto.local import LocalServer, LocalServerError


@dataclass(frozen=True)
class ServerChoice:
    """What the user picked in the server section."""

    mode: str = "local"  # "local" | "remote"
    address: str = "127.0.0.1:50051"
    tls: bool = False
    root_certificates: str = ""  # PEM path
    token: str = ""
    local_args: tuple[str, ...] = ()  # extra impasto-server flags for the local server

    @property
    def label(self) -> str:
        return "the local server" if self.mode == "local" else self.address

    @property
    def remote_tls(self) -> bool | None:
        """The TLS setting of a remote server (None for the local one), as describe_error's
        ``tls`` takes it."""
        return None if self.mode == "local" else self.tls


class ConnectionClosedError(RuntimeError):
    """The connection was closed (the widget went away) while it was being made."""


class _LocalServers:
    """The one local server of this process, shared by reference count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: LocalServer | None = None
        self._args: tuple[str, ...] = ()
        self._users: set[int] = set()
        atexit.register(self.stop)

    def acquire(self, user: int, args: tuple[str, ...]) -> str:
        """The running server's address; starts it (blocking) when none runs."""
        with self._lock:
            self._users.add(user)
            server = self._server
            if server is not None and (server.process is None or server.process.poll() is not None):
                server.stop()  # it died: start a fresh one
                server = self._server = None
            if server is not None and args != self._args:
                server.stop()
                server = self._server = None
            if server is None:
                server = LocalServer(extra_args=args)
                server.start()  # raises LocalServerError with the log's tail
                self._server, self._args = server, args
            assert server.address is not None
            return server.address

    def release(self, user: int) -> None:
        with self._lock:
            self._users.discard(user)
            if self._users:
                return
            server, self._server = self._server, None
        if server is not None:
            server.stop()

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            self._users.clear()
        if server is not None:
            server.stop()

    @property
    def server(self) -> LocalServer | None:
        return self._server


LOCAL_SERVERS = _LocalServers()


class Connection:
    """A client for the chosen server, made once per choice and reused between runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._key: tuple[object, ...] | None = None
        self.address: str = ""
        self._uses_local = False
        self._closes = 0  # how many times close() ran: a claim made across one is dropped

    def client(self, choice: ServerChoice) -> Client:
        """Connect (starting the local server when needed); call from a worker thread."""
        if choice.mode == "local":
            with self._lock:
                closes = self._closes
            address = LOCAL_SERVERS.acquire(id(self), choice.local_args)  # seconds to start
            with self._lock:
                closed_meanwhile = self._closes != closes
                if not closed_meanwhile:
                    self._uses_local = True
            if closed_meanwhile:
                # close() ran while the server started, so it had no claim to release yet;
                # release it now, or the server would run on with no user until exit.
                LOCAL_SERVERS.release(id(self))
                raise ConnectionClosedError("the connection was closed while the server started")
            key: tuple[object, ...] = ("local", address)
        else:
            address = choice.address.strip()
            if not address:
                raise ValueError("enter the server's address, e.g. gpu-host:50051")
            key = ("remote", address, choice.tls, choice.root_certificates, choice.token)
        with self._lock:
            if self._client is not None and self._key == key:
                return self._client
            if self._client is not None:
                self._client.close()
            roots = None
            if choice.mode == "remote" and choice.tls and choice.root_certificates:
                try:
                    roots = Path(choice.root_certificates).expanduser().read_bytes()
                except OSError as exc:
                    raise ValueError(
                        f"cannot read the CA certificate {choice.root_certificates}: {exc}"
                    ) from exc
            remote = choice.mode == "remote"
            self._client = Client(
                address,
                token=(choice.token or None) if remote else None,
                tls=remote and choice.tls,
                root_certificates=roots,
            )
            self._key = key
            self.address = address
            return self._client

    def close(self) -> None:
        """Drop the client and this widget's claim on the local server (one being started
        now is released once it has started). The connection can be used again later."""
        with self._lock:
            client, self._client, self._key = self._client, None, None
            uses_local, self._uses_local = self._uses_local, False
            self._closes += 1
        if client is not None:
            client.close()
        if uses_local:
            LOCAL_SERVERS.release(id(self))


def describe_error(
    error: BaseException, where: str, *, during_job: bool = False, tls: bool | None = None
) -> str:
    """A message for a napari notification: what went wrong, where, and what to do.

    ``during_job``: the server had accepted the job (it sent a queued or started event), so a
    broken call means the connection was lost, not that the server could not be reached.
    ``tls``: whether a remote server was asked for with TLS; given, a server that could not be
    reached is probed with a plain connection (blocks up to 2 s: call from a worker thread)."""
    if isinstance(error, ImpastoError):
        code, message = error.code, error.message
        # A server's verdict on a job it had carries a reason; a broken connection has none.
        by_reason = _describe_reason(error, where)
        if by_reason is not None:
            return by_reason
        if code == grpc.StatusCode.UNAVAILABLE:
            if during_job:
                return (
                    f"impasto: lost the connection to the server at {where} during the job "
                    f"({message}). The job did not finish; check that the server runs, then "
                    "run again."
                )
            listening = accepts_connections(where) if tls is not None else None
            if listening and tls:
                return (
                    f"impasto: {where} accepts connections, but TLS with it failed ({message}). "
                    "Check the CA file (the CA that signed the server's certificate) and that "
                    "the server uses TLS."
                )
            if listening:
                return (
                    f"impasto: {where} accepts connections, but not gRPC without TLS "
                    f"({message}). If the server uses TLS, tick TLS."
                )
            if listening is False:
                return (
                    f"impasto: cannot reach the server at {where}: nothing accepts connections "
                    f"there ({message}). Check that it runs, and the address and port."
                )
            return (
                f"impasto: cannot reach the server at {where} ({message}). Check that it runs, "
                "the address and port, and the TLS setting."
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return f"impasto: the server at {where} refused the token (unauthenticated): {message}"
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return f"impasto: the server at {where} denied the request: {message}"
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            hint = f" Try again in {error.retry_after:g} s." if error.retry_after else ""
            if "queue" in message.lower() or "jobs" in message.lower():
                return f"impasto: the server's queue is full: {message}.{hint}"
            return (
                f"impasto: the image is too large for the server: {message}. Lower the size.{hint}"
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            details = "; ".join(f"{f}: {d}" for f, d in error.field_violations) or message
            return f"impasto: the server rejected the request: {details}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"impasto: the server at {where} did not answer in time: {message}"
        return f"impasto: the server at {where} failed the job ({code.name}): {message}"
    if isinstance(error, LocalServerError):
        # "exited with code N:" or "did not ... in time:", then the tail of the server's log,
        # whose error lines say why
        head, *log = [line.strip() for line in str(error).splitlines() if line.strip()]
        errors = [line for line in log if " ERROR " in line or "Error" in line]
        return "impasto: the local server did not start: " + " / ".join(
            [head.rstrip(":"), *(errors or log)[-3:]]
        )
    if isinstance(error, (ValueError, OSError, ConnectionClosedError)):
        return f"impasto: {error}"
    return f"impasto: unexpected error ({type(error).__name__}): {error}"


def _describe_reason(error: ImpastoError, where: str) -> str | None:
    """The message for a job the server ended itself (``error.reason`` set), else None."""
    reason, message = error.reason, error.message
    if reason == "SHUTDOWN":
        return (
            f"impasto: the server at {where} shut down during the job; it did not finish. "
            "Run it again once the server is back (or on another server)."
        )
    if reason == "OUT_OF_MEMORY":
        return (
            f"impasto: the server at {where} ran out of device memory for this job. Reduce "
            "the size or the number of scales, or use fewer or smaller style layers (on a "
            f"GPU server, bfloat16 precision also helps). Server: {message}"
        )
    if reason == "TOO_LARGE":
        return (
            f"impasto: this job does not fit the memory of the server at {where}, so it did "
            f"not run. Lower the size. Server: {message}"
        )
    if reason == "CANCELLED":
        return f"impasto: the job was cancelled on the server at {where}: {message}"
    if reason == "DEADLINE":
        return (
            f"impasto: the job passed its deadline on the server at {where}: {message}. Use "
            "fewer iterations or a smaller size."
        )
    if reason == "INVALID":
        details = "; ".join(f"{f}: {d}" for f, d in error.field_violations) or message
        return f"impasto: the server rejected the job: {details}"
    if reason == "INTERNAL":
        return (
            f"impasto: the server at {where} failed the job (an internal error; its log has "
            f"the details): {message}"
        )
    return None
