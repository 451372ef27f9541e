"""Which server the widget talks to: an embedded local one, or a remote address.

Local mode shares one ``LocalServer`` child process per napari process: it starts on first use
(from a worker thread, since loading the weights takes seconds) and stops when the last widget
using it goes away, or at interpreter exit at the latest.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    def target(self) -> tuple[object, ...]:
        """What identifies the server this choice reaches, and how: the local server by its
        flags (the remote fields, kept for later, do not count), a remote one by every field."""
        if self.mode == "local":
            return ("local", self.local_args)
        return ("remote", self.address.strip(), self.tls, self.root_certificates, self.token)

    @property
    def remote_tls(self) -> bool | None:
        """The TLS setting of a remote server (None for the local one), as describe_error's
        ``tls`` takes it."""
        return None if self.mode == "local" else self.tls


class ConnectionClosedError(RuntimeError):
    """The connection was closed (the widget went away) while it was being made."""


class StaleConnectionError(ConnectionClosedError):
    """Another server was chosen while this connection was being made; it was dropped."""


@dataclass(eq=False)
class _Start:
    """A start of the local server under way; the others who want it wait for ``done``."""

    server: LocalServer
    args: tuple[str, ...]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class _LocalServers:
    """The one local server of this process, shared by reference count: each claim is an
    object of its holder's, released once. The last release stops the server in a background
    thread (it may take seconds to exit, and releases come from the GUI thread).

    The lock is only ever held for moments: a start (seconds, while the weights load) runs
    outside it, in the thread that asked first, and those who want the server meanwhile wait
    for that start, so a release from the GUI thread never waits for one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: LocalServer | None = None
        self._args: tuple[str, ...] = ()
        self._users: set[object] = set()
        self._starting: _Start | None = None
        self._stops = 0  # how many times stop() ran: a start across one is undone
        self._stopping: list[threading.Thread] = []
        atexit.register(self.stop)

    def acquire(self, claim: object, args: tuple[str, ...]) -> str:
        """The running server's address; starts it (blocking) when none runs, or waits for
        the start under way. Raises the start's error (LocalServerError with the log's tail),
        or ConnectionClosedError when stop() ran meanwhile."""
        with self._lock:
            stops = self._stops
        try:
            while True:
                old: LocalServer | None = None
                with self._lock:
                    if self._stops != stops:
                        raise ConnectionClosedError("the local server was stopped")
                    self._users.add(claim)
                    start = self._starting
                    if start is None:
                        server = self._server
                        if server is not None and (
                            server.process is None
                            or server.process.poll() is not None  # it died
                            or args != self._args
                        ):
                            old, self._server = server, None
                        elif server is not None:
                            assert server.address is not None
                            return server.address
                        start = self._starting = _Start(LocalServer(extra_args=args), args)
                        mine = True
                    else:
                        mine = False
                if not mine:
                    start.done.wait()
                    if start.error is not None and start.args == args:
                        raise start.error
                    continue  # started (or failed with other arguments): look again
                return self._start(start, stops, old)
        except BaseException:
            with self._lock:
                self._users.discard(claim)
            raise

    def _start(self, start: _Start, stops: int, old: LocalServer | None) -> str:
        """Stop ``old`` (dead, or with other arguments) and run ``start``, outside the lock;
        then make its server the running one."""
        try:
            if old is not None:
                old.stop()
            start.server.start()  # raises LocalServerError with the log's tail
        except BaseException as error:
            start.error = error
            with self._lock:
                self._starting = None
            start.done.set()
            raise
        stopped = False
        with self._lock:
            self._starting = None
            if self._stops != stops:
                stopped = True  # stop() ran meanwhile (at exit): this one goes too
            else:
                self._server, self._args = start.server, start.args
        if stopped:
            start.error = ConnectionClosedError("the local server was stopped")
        start.done.set()
        if stopped:
            start.server.stop()
            raise ConnectionClosedError("the local server was stopped")
        assert start.server.address is not None
        return start.server.address

    def release(self, claim: object) -> None:
        with self._lock:
            if claim not in self._users:
                return
            self._users.discard(claim)
            if self._users:
                return
            server, self._server = self._server, None
            if server is None:
                return
            stopping = threading.Thread(
                target=server.stop, name="impasto-local-server-stop", daemon=True
            )
            stopping.start()
            self._stopping = [t for t in self._stopping if t.is_alive()] + [stopping]

    def stop(self) -> None:
        """Stop the server now (and one starting), and wait for those stopping in the
        background (at exit, so that none is left running)."""
        with self._lock:
            server, self._server = self._server, None
            self._users.clear()
            self._stops += 1
            start = self._starting
            stopping, self._stopping = self._stopping, []
        if server is not None:
            server.stop()
        if start is not None:
            process = start.server.process
            if process is not None and process.poll() is None:
                process.terminate()  # its start fails at once
            start.done.wait(30)
        for thread in stopping:
            thread.join(timeout=30)

    @property
    def server(self) -> LocalServer | None:
        return self._server


LOCAL_SERVERS = _LocalServers()


@dataclass(eq=False)
class _Held:
    """A client the connection made, the local-server claim it holds, and the jobs using it."""

    client: Client
    claim: object | None = None
    jobs: int = 0
    retired: bool = False  # replaced: closed once no job uses it


class Connection:
    """A client for the chosen server, made once per choice and reused between runs.

    A connection being made (the local server starting takes seconds) may be overtaken by a
    newer choice, or abandoned by a cancelled run: it then installs nothing and lets go of its
    own claim, so it never closes the client the current choice uses. A client replaced while
    a job streams through it is closed when that job ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: _Held | None = None
        self._key: tuple[object, ...] | None = None
        self._held: list[_Held] = []  # every client not closed yet: current and retired
        self._wanted: tuple[object, ...] | None = None  # the choice asked for last
        self.address: str = ""
        self._closes = 0  # how many times close() ran: a claim made across one is dropped

    def client(self, choice: ServerChoice) -> Client:
        """Connect (starting the local server when needed); call from a worker thread.

        Raises StaleConnectionError when another server was chosen meanwhile, and
        ConnectionClosedError when the connection was closed meanwhile."""
        remote = choice.mode == "remote"
        address = choice.address.strip()
        if remote and not address:
            raise ValueError("enter the server's address, e.g. gpu-host:50051")
        wanted = choice.target
        with self._lock:
            self._wanted = wanted
            closes = self._closes
        claim: object | None = None
        if remote:
            key: tuple[object, ...] = wanted
        else:
            claim = object()
            address = LOCAL_SERVERS.acquire(claim, choice.local_args)  # seconds to start
            key = ("local", address, choice.local_args)
        drop: list[_Held] = []
        try:
            with self._lock:
                if self._closes != closes:
                    # close() ran meanwhile, so it had no claim to release yet: release it
                    # now, or the server would run on with no user until exit.
                    raise ConnectionClosedError(
                        "the connection was closed while the server started"
                    )
                if self._wanted != wanted:
                    raise StaleConnectionError(
                        f"another server was chosen while connecting to {choice.label}"
                    )
                current = self._current
                if current is not None and self._key == key:
                    return current.client  # our claim is released below: it has one
                roots = None
                if remote and choice.tls and choice.root_certificates:
                    try:
                        roots = Path(choice.root_certificates).expanduser().read_bytes()
                    except OSError as exc:
                        raise ValueError(
                            f"cannot read the CA certificate {choice.root_certificates}: {exc}"
                        ) from exc
                held = _Held(
                    Client(
                        address,
                        token=(choice.token or None) if remote else None,
                        tls=remote and choice.tls,
                        root_certificates=roots,
                    ),
                    claim,
                )
                claim = None  # the client holds it now
                if current is not None:
                    drop = self._retire(current)
                self._held.append(held)
                self._current, self._key = held, key
                self.address = address
                return held.client
        finally:
            if claim is not None:
                LOCAL_SERVERS.release(claim)
            _close(drop)

    def _retire(self, held: _Held) -> list[_Held]:
        """Take ``held`` out of use (the lock is held); returns it when it can close now."""
        if held is self._current:
            self._current, self._key = None, None
        held.retired = True
        if held.jobs:
            return []  # closed when its last job ends
        self._held.remove(held)
        return [held]

    @contextlib.contextmanager
    def in_use(self, client: Client) -> Iterator[None]:
        """While a job streams through ``client``: it is not closed unless close() runs."""
        with self._lock:
            held = next((h for h in self._held if h.client is client), None)
            if held is not None:
                held.jobs += 1
        drop: list[_Held] = []
        try:
            yield
        finally:
            if held is not None:
                with self._lock:
                    held.jobs -= 1
                    if held.retired and not held.jobs and held in self._held:
                        self._held.remove(held)
                        drop = [held]
                _close(drop)

    def release_local(self) -> None:
        """The choice is no longer the local server: drop its client and this connection's
        claim on it (it stops when no other widget uses it), now or once a job using it ends;
        a local server still starting for this connection is released once it has started,
        unless the local server is chosen again (want_local) meanwhile."""
        with self._lock:
            if self._wanted is not None and self._wanted[0] == "local":
                self._wanted = None
            current = self._current
            drop = self._retire(current) if current is not None and current.claim else []
        _close(drop)

    def want_local(self, local_args: tuple[str, ...] = ()) -> None:
        """The choice is the local server (again): a local server still starting for this
        connection (for a cancelled run or a check) is kept and used once it has started,
        rather than dropped as another choice's."""
        with self._lock:
            self._wanted = ServerChoice(mode="local", local_args=local_args).target

    def close(self) -> None:
        """Drop every client, and this widget's claims on the local server (one being started
        now is released once it has started), also under a running job: closing the channel
        ends it. The connection can be used again later."""
        with self._lock:
            drop, self._held = self._held, []
            self._current, self._key, self._wanted = None, None, None
            self._closes += 1
        _close(drop)


def _close(held: list[_Held]) -> None:
    for each in held:
        each.client.close()
        if each.claim is not None:
            LOCAL_SERVERS.release(each.claim)


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
