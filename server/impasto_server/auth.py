"""Bearer-token authentication and the client identity that fair scheduling keys on."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

#: Methods open without a token: probes and tool discovery, and the server's description
#: (which tells a client whether it needs a token).
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/impasto.v1.StyleTransferService/GetServerInfo",
)


def read_tokens(path: str | Path) -> list[str]:
    """One token per line; blank lines and lines starting with # are ignored."""
    lines = Path(path).read_text().splitlines()
    tokens = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not tokens:
        raise ValueError(f"{path} holds no tokens")
    return tokens


def _bearer(metadata: Iterable[Any] | None) -> str | None:
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
    token = _bearer(context.invocation_metadata())
    if token:
        return token_identity(token)
    return context.peer() or "unknown"


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED unless ``authorization: Bearer <token>`` names a known token."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def _allowed(self, token: str | None) -> bool:
        if not token:
            return False
        given = token.encode()
        # Compare against every token in constant time, so timing reveals nothing.
        return sum(hmac.compare_digest(given, known) for known in self._tokens) > 0

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        token = _bearer(handler_call_details.invocation_metadata)
        if self._allowed(token):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        message = (
            "a bearer token is required: send metadata 'authorization: Bearer <token>'"
            if token is None
            else "the bearer token is not valid"
        )

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                deny,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            deny,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
