"""Two server processes serve as one: gRPC round_robin spreads jobs, retries ride out a loss.

Which server ran a job is observable from outside in two independent ways, both used here:
each server's Prometheus counter ``impasto_jobs_total{outcome="ok"}``, and the job ids the
clients got back, each of which appears in the log of exactly one server. (``Started.device``
cannot tell them apart: both servers run on "cpu".)
"""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from impasto.client import Client, ImpastoError, Result, Started
from impasto.local import LocalServer

CLIENTS = 3
JOBS_PER_CLIENT = 4
JOB = {"size": 32, "iterations": 2, "num_scales": 1, "output_format": "raw"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """One ``python -m impasto_server`` child with its own metrics port."""

    def __init__(self) -> None:
        self.metrics_port = free_port()
        self.local = LocalServer(
            extra_args=("--metrics-port", str(self.metrics_port), "--log-level", "INFO"),
            grace=5.0,
        )

    @property
    def address(self) -> str:
        assert self.local.address is not None
        return self.local.address

    def ok_jobs(self) -> int:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        match = re.search(r'^impasto_jobs_total\{outcome="ok"\} (\S+)$', text, re.MULTILINE)
        return int(float(match.group(1))) if match else 0

    def logged_job_ids(self) -> set[str]:
        return set(re.findall(r"job=(\w+) .*outcome=ok", self.local.log))


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(2):
            replica = Replica()
            replica.local.start()
            started.append(replica)
        yield started
    finally:
        for replica in started:
            replica.local.stop()


def run_job(client: Client, content: np.ndarray, style: np.ndarray) -> Result:
    started: Started | None = None
    result: Result | None = None
    for event in client.stylize(content, [style], timeout=60, **JOB):
        if isinstance(event, Started):
            started = event
        elif isinstance(event, Result):
            result = event
    assert started is not None and result is not None
    assert started.job_id == result.job_id
    return result


def test_jobs_spread_over_both_servers_and_survive_losing_one(
    replicas: list[Replica], tiny_content: np.ndarray, tiny_style: np.ndarray
) -> None:
    first, second = replicas
    targets = [first.address, second.address]
    clients = [Client(targets) for _ in range(CLIENTS)]
    try:
        # Several clients at once, each sending its jobs one after another.
        def one_client(client: Client) -> list[Result]:
            return [run_job(client, tiny_content, tiny_style) for _ in range(JOBS_PER_CLIENT)]

        with ThreadPoolExecutor(CLIENTS) as pool:
            batches = list(pool.map(one_client, clients))
        results = [r for batch in batches for r in batch]
        assert len(results) == CLIENTS * JOBS_PER_CLIENT
        assert all(r.image.shape == (27, 32, 3) for r in results)

        ids = {r.job_id for r in results}
        # A job's log line is written just after its result is sent.
        deadline = time.monotonic() + 10
        while not ids <= first.logged_job_ids() | second.logged_job_ids():
            assert time.monotonic() < deadline, "some job ids never reached a server's log"
            time.sleep(0.05)
        on_first, on_second = first.logged_job_ids() & ids, second.logged_job_ids() & ids
        counts = (first.ok_jobs(), second.ok_jobs())
        # Every job ran on exactly one server, and both servers ran some.
        assert on_first | on_second == ids and not on_first & on_second
        assert counts == (len(on_first), len(on_second)), (counts, on_first, on_second)
        print("jobs per server:", counts)
        assert min(counts) >= 1, f"round_robin sent every job to one server: {counts}"

        # One server goes away (SIGTERM, graceful stop, the process exits); new jobs, from the
        # clients that were connected to it and from a new one, still succeed on the other.
        assert first.local.stop() == 0
        before = second.ok_jobs()
        latecomer = Client(targets)
        clients.append(latecomer)
        lock = threading.Lock()
        after: list[Result] = []

        def after_loss(client: Client) -> None:
            for _ in range(2):
                result = run_job(client, tiny_content, tiny_style)
                with lock:
                    after.append(result)

        with ThreadPoolExecutor(len(clients)) as pool:
            list(pool.map(after_loss, clients))
        assert len(after) == 2 * len(clients)
        deadline = time.monotonic() + 10
        while not {r.job_id for r in after} <= second.logged_job_ids():
            assert time.monotonic() < deadline, "some job ids never reached the server's log"
            time.sleep(0.05)
        assert second.ok_jobs() == before + len(after)
    finally:
        for client in clients:
            client.close()


@pytest.fixture
def draining_pair(
    make_server: Callable[..., Any], tiny_content: np.ndarray, tiny_style: np.ndarray
) -> Iterator[tuple[Any, Any]]:
    """Two in-process servers; the first is draining: it has closed its port and sent GOAWAY
    on its connections, and finishes a running job (60 s of grace) over its open stream."""
    draining, healthy = make_server(), make_server()
    with Client(draining.address) as direct:
        long_job = direct.stylize(tiny_content, [tiny_style], size=32, iterations=5000)
        events = iter(long_job)
        while not isinstance(next(events), Started):
            pass
        stopper = threading.Thread(target=draining.shutdown, kwargs={"grace": 60.0})
        stopper.start()
        try:
            while draining.service.accepting:
                time.sleep(0.01)
            yield draining, healthy
        finally:
            long_job.cancel()
            stopper.join(30)
    assert not stopper.is_alive()


def connected_client(targets: list[str]) -> Client:
    """A balancing Client whose connections to every server are up, so round_robin alternates
    from the first job on."""
    client = Client(targets)
    for _ in range(2 * len(targets)):
        client.server_info(timeout=10)
    return client


def test_retry_moves_jobs_off_a_draining_server(
    draining_pair: tuple[Any, Any], tiny_content: np.ndarray, tiny_style: np.ndarray
) -> None:
    """The service config's retry policy (UNAVAILABLE, before the first event) sends jobs that
    a draining server refuses to the other server: every job succeeds."""
    draining, healthy = draining_pair
    client = connected_client([draining.address, healthy.address])
    try:
        results = [run_job(client, tiny_content, tiny_style) for _ in range(6)]
    except ImpastoError as error:
        pytest.fail(f"a job failed instead of being retried on the other server: {error}")
    finally:
        client.close()
    assert len({r.job_id for r in results}) == 6
    # The draining server is still finishing its running job, and took none of these.
    assert draining.scheduler.running == 1
    ok = healthy.metrics.registry.get_sample_value("impasto_jobs_total", {"outcome": "ok"})
    assert ok == 6
