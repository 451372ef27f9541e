"""A shortened ``benchmarks/load.py``: several clients, cancellations and deadlines, no job lost,
queue positions only falling, server threads back to a plateau."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

LOAD = Path(__file__).resolve().parents[2] / "benchmarks" / "load.py"


@pytest.fixture(scope="module")
def load():
    spec = importlib.util.spec_from_file_location("impasto_load_benchmark", LOAD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_short_load_loses_no_job(make_server, load):
    # One job in flight per client: every queue position must only fall. The server runs in
    # this process, so its memory and threads are this process's.
    server = make_server(max_running=1, queue_size=6, max_jobs_per_client=2)
    summary = load.run_load(
        server.address, os.getpid(), clients=8, jobs=2, rounds=2, in_flight=1, time_limit=90
    )
    assert not summary["timed_out"]
    assert summary["jobs"] == 8 * 2 * 2
    assert summary["lost"] == 0, summary["lost_examples"]
    assert summary["queue_position_increases"] == 0
    assert summary["completed"] > 0
    # With 8 clients and room for 6 waiting jobs, some are turned away, each with a reason.
    assert summary["accepted"] + sum(summary["rejected"].values()) == summary["jobs"]
    assert summary["cancelled"] + summary["deadline_exceeded"] > 0
    first, second = summary["rounds"]
    assert second["threads"][2] <= first["threads"][1] + 2  # no thread growth across rounds


def test_several_jobs_per_client_still_lose_nothing(make_server, load):
    server = make_server(max_running=1, queue_size=8, max_jobs_per_client=2)
    summary = load.run_load(
        server.address, os.getpid(), clients=6, jobs=3, rounds=1, in_flight=3, time_limit=90
    )
    assert summary["lost"] == 0, summary["lost_examples"]
    # The third job in flight of each client meets the per-client limit.
    assert summary["rejected"].get("per-client limit", 0) > 0
