"""Exit 0 when an impasto server's gRPC health service says SERVING, else 1.

    python grpc_health_check.py [HOST:PORT] [--service NAME] [--ca PEM] [--server-name NAME]
                                [--timeout S]

Used as Docker's HEALTHCHECK; Kubernetes uses its native gRPC probes instead. A server with
TLS needs --ca (and --server-name where its certificate does not name the address): in a
container, set them with the environment variables IMPASTO_HEALTH_CA and
IMPASTO_HEALTH_SERVER_NAME, which are their defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--service", default="impasto.v1.StyleTransferService")
    parser.add_argument(
        "--ca", default=os.environ.get("IMPASTO_HEALTH_CA") or None,
        help="PEM CA bundle when the server uses TLS (default: $IMPASTO_HEALTH_CA)",
    )  # fmt: skip
    parser.add_argument(
        "--server-name", default=os.environ.get("IMPASTO_HEALTH_SERVER_NAME") or None,
        help="the name in the server's certificate (default: $IMPASTO_HEALTH_SERVER_NAME)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.ca:
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        try:
            ca = Path(args.ca).read_bytes()
        except OSError as exc:
            print(f"--ca {args.ca}: {exc.strerror or exc}", file=sys.stderr)
            return 1  # Docker reads 1 as unhealthy (2 is reserved)
        credentials = grpc.ssl_channel_credentials(ca)
        channel = grpc.secure_channel(args.address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(args.address)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"{args.address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
