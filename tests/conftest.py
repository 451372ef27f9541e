"""Shared fixtures: one warm engine per test session, real servers on 127.0.0.1 port 0."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def shared_engine() -> Any:
    """The CPU engine with the original weights, loaded once for every server test."""
    from impasto_server.engine import Engine

    return Engine(device="cpu")


@pytest.fixture
def make_server(shared_engine: Any) -> Iterator[Callable[..., Any]]:
    """``make_server(load=True, engine=..., **ServerConfig fields)`` -> a started Server."""
    from impasto_server.app import Server, ServerConfig

    servers: list[Any] = []

    def make(*, load: bool = True, engine: Any = None, **config: Any) -> Any:
        config.setdefault("grace_seconds", 0.0)
        server = Server(
            ServerConfig(host="127.0.0.1", port=0, **config), engine=engine or shared_engine
        )
        servers.append(server)
        server.start()
        if load:
            server.load()
        return server

    yield make
    for server in servers:
        server.shutdown(grace=0.0)


@pytest.fixture
def connect() -> Iterator[Callable[[Any, int], list[Any]]]:
    """``connect(server, n)`` -> n clients of ``server``, each closed after the test."""
    from impasto.client import Client

    opened: list[Any] = []

    def make(server: Any, n: int) -> list[Any]:
        clients = [Client(server.address) for _ in range(n)]
        opened.extend(clients)
        return clients

    yield make
    for client in opened:
        client.close()


@pytest.fixture
def server(make_server: Callable[..., Any]) -> Any:
    return make_server()


@pytest.fixture
def client(server: Any) -> Iterator[Any]:
    from impasto.client import Client

    with Client(server.address) as c:
        yield c


@pytest.fixture(scope="session")
def tiny_content() -> np.ndarray:
    """A 40x48 RGB uint8 picture with structure (gradients and a square)."""
    y, x = np.mgrid[:40, :48]
    image = np.stack([x * 5, y * 6, (x + y) * 3], axis=-1).astype(np.uint8)
    image[10:30, 12:36] = (200, 40, 90)
    return image


@pytest.fixture(scope="session")
def tiny_style() -> np.ndarray:
    """A 32x32 RGB uint8 stripe pattern."""
    y, x = np.mgrid[:32, :32]
    stripes = ((x + y) // 4) % 2
    return np.where(stripes[..., None] == 0, (230, 200, 40), (20, 40, 160)).astype(np.uint8)
