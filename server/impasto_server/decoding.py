"""Requests whose bytes are not the message they claim to be get INVALID_ARGUMENT.

Left alone, grpcio answers an undecodable request with INTERNAL ("Exception deserializing
request!"), which reads as a server fault. This interceptor decodes the request itself and
refuses the bad ones with a message that names the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class _Undecodable:
    error: str


def _safe(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def run(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
            return _Undecodable(f"{type(exc).__name__}: {exc}")

    return run


def _guarded(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext, *more: Any) -> Any:
        if isinstance(request, _Undecodable):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request bytes are not a valid message for {method} ({request.error})",
            )
        return behavior(request, context, *more)

    # A behaviour that answers through a callback, holding no thread while its stream is open
    # (grpcio-health-checking's Watch), stays one: without these it became a blocking stream.
    for name in ("experimental_non_blocking", "experimental_thread_pool"):
        if hasattr(behavior, name):
            setattr(run, name, getattr(behavior, name))
    return run


class DecodeGuardInterceptor(grpc.ServerInterceptor):
    """Wraps every unary-request method so a decoding failure is INVALID_ARGUMENT."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        method = handler_call_details.method or "?"
        deserialize = _safe(handler.request_deserializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _guarded(handler.unary_stream, method),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            _guarded(handler.unary_unary, method),
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )
