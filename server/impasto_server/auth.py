"""Bearer-token authentication and the client identity that fair scheduling keys on.

The token file is re-read whenever it changes (its size, mtime or inode), so tokens can be
added, revoked or given an expiry without restarting the server. Each line is a token,
optionally followed by ``expires=<ISO 8601 time>`` (UTC when no zone is given); blank lines
and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("impasto_server.auth")

#: Methods open without a token: probes and tool discovery, and the server's description
#: (which tells a client whether it needs a token).
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/impasto.v1.StyleTransferService/GetServerInfo",
)


#: Why a token is refused, by its state, as the client is told.
REFUSALS = {
    "missing": "a bearer token is required: send metadata 'authorization: Bearer <token>'",
    "invalid": "the bearer token is not valid",
    "expired": "the bearer token has expired",
}


@dataclass(frozen=True)
class Token:
    secret: bytes
    expires: float | None = None  # seconds since the epoch; None: never


def _parse_time(text: str) -> float:
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def parse_tokens(text: str, source: str = "token file") -> list[Token]:
    """Tokens from the file's text; a line whose expiry cannot be read is skipped (fail
    closed) with a warning, never accepted without its expiry."""
    tokens: list[Token] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        secret, *rest = line.split()
        expires: float | None = None
        try:
            for item in rest:
                key, _, value = item.partition("=")
                if key != "expires" or not value:
                    raise ValueError(f"unknown field {item!r}")
                expires = _parse_time(value)
        except ValueError as exc:
            log.warning("%s line %d ignored: %s", source, number, exc)
            continue
        tokens.append(Token(secret.encode(), expires))
    return tokens


def read_tokens(path: str | Path) -> list[Token]:
    """The tokens in ``path``; ValueError when it holds none (a server must start with one)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise OSError(f"token file {path}: {exc.strerror or exc}") from exc
    tokens = parse_tokens(text, str(path))
    if not tokens:
        raise ValueError(f"{path} holds no tokens")
    return tokens


class TokenStore:
    """The accepted tokens, re-read from their file when it changes (checked at most every
    ``check_interval`` seconds). An emptied file accepts nobody; a file that cannot be read
    keeps the last tokens read, so a half-done edit never opens the server."""

    def __init__(
        self,
        path: str | Path | None = None,
        tokens: Iterable[Token | str] = (),
        check_interval: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._tokens = [t if isinstance(t, Token) else Token(t.encode()) for t in tokens]
        if self.path is not None:
            self._tokens = read_tokens(self.path)
            self._signature = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.check_interval:
                return
            self._checked = now
            signature = self._stat()
            if signature is None or signature == self._signature:
                if signature is None and self._signature is not None:
                    log.warning("cannot read %s; keeping the last tokens read", self.path)
                    self._signature = None
                return
            try:
                tokens = parse_tokens(self.path.read_text(), str(self.path))
            except OSError as exc:
                log.warning("cannot read %s (%s); keeping the last tokens read", self.path, exc)
                return
            self._signature = signature
            self._tokens = tokens
            log.info("token file %s reloaded: %d tokens", self.path, len(tokens))

    def state(self, token: str | None) -> str:
        """What ``token`` is now: "accepted", or one of REFUSALS' keys."""
        if not token:
            return "missing"
        self._refresh()
        given = token.encode()
        now = self._clock()
        known: Token | None = None
        # Compare against every token in constant time, so timing reveals nothing.
        for candidate in self._tokens:
            if hmac.compare_digest(given, candidate.secret):
                known = candidate
        if known is None:
            return "invalid"
        if known.expires is not None and now >= known.expires:
            return "expired"
        return "accepted"

    def check(self, token: str | None) -> str | None:
        """None when ``token`` is accepted, else why not (for the client's message)."""
        state = self.state(token)
        return None if state == "accepted" else REFUSALS[state]


def bearer(metadata: Iterable[Any] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def token_identity(token: str) -> str:
    # Logs and metrics must never show the token itself.
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:10]


def client_identity(context: grpc.ServicerContext) -> str:
    """The key fair scheduling uses: the bearer token if there is one, else the connection.

    Without tokens a client is its connection (peer address and port): one Client object has
    one channel, so two programs on one host are still two clients.
    """
    token = bearer(context.invocation_metadata())
    if token:
        return token_identity(token)
    return context.peer() or "unknown"


def _ignore_body(_data: bytes) -> bytes:
    # A refused request's bytes are never parsed: an unauthenticated peer costs no decoding.
    # (grpcio takes None as a failed deserialisation, so an empty value stands in.)
    return b""


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED unless ``authorization: Bearer <token>`` names a valid token."""

    def __init__(
        self,
        tokens: TokenStore | Iterable[str],
        on_refused: Callable[[grpc.ServicerContext, str], None] | None = None,
    ) -> None:
        self.store = tokens if isinstance(tokens, TokenStore) else TokenStore(tokens=tokens)
        self._on_refused = on_refused  # counts and logs each refusal

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        refusal = self.store.check(bearer(handler_call_details.invocation_metadata))
        if refusal is None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            if self._on_refused is not None:
                self._on_refused(context, refusal)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                deny,
                request_deserializer=_ignore_body,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            deny,
            request_deserializer=_ignore_body,
            response_serializer=handler.response_serializer,
        )
