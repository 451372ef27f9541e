"""Changing the server choice while a connection is still being made: the newer choice wins."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from impasto.client import Client
from napari_helpers import add_content_and_style, use_remote, wait_for_run
from napari_impasto.connection import LOCAL_SERVERS, Connection, ServerChoice, _LocalServers


def _running_jobs(address: str) -> int:
    with Client(address) as client:
        return client.server_info().running_jobs


class _HeldStart:
    """LocalServer.start, held until ``go`` is set; the started processes in ``processes``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from impasto.local import LocalServer

        self.starting = threading.Event()
        self.go = threading.Event()
        self.processes: list[Any] = []
        real_start = LocalServer.start

        def held_start(server: Any) -> str:
            self.starting.set()
            self.go.wait(60)
            address = real_start(server)
            self.processes.append(server.process)
            return address

        monkeypatch.setattr(LocalServer, "start", held_start)


def _long_remote_run(widget: Any, server: Any, qtbot: Any) -> None:
    use_remote(widget, server.address)
    widget.run()
    qtbot.waitUntil(lambda: "iteration" in widget.status.text(), timeout=60_000)
    assert _running_jobs(server.address) == 1


def _local_start_ends_and_the_remote_run_goes_on(
    held: _HeldStart, widget: Any, server: Any, qtbot: Any, notifications: list[Any]
) -> None:
    held.go.set()  # the local server finishes starting while the remote job runs
    qtbot.waitUntil(lambda: bool(held.processes), timeout=120_000)
    (process,) = held.processes
    # Nobody wants it any more: it stops (unless another panel used it).
    qtbot.waitUntil(lambda: process.poll() is not None, timeout=30_000)
    assert LOCAL_SERVERS.server is None
    qtbot.wait(300)
    assert widget.run_state is not None, widget.last_outcome  # the remote job still runs
    assert _running_jobs(server.address) == 1
    assert widget.connection.address == server.address
    widget.cancel()
    assert wait_for_run(qtbot, widget, timeout=30).status == "cancelled"
    assert [n.message for n in notifications if n.severity.name in ("ERROR", "WARNING")] == []


def test_a_cancelled_local_start_leaves_a_remote_run_alone(
    napari_server: Any, dock: Any, qtbot: Any, monkeypatch: pytest.MonkeyPatch,
    notifications: list[Any], tiny_content: Any, tiny_style: Any,
) -> None:  # fmt: skip
    held = _HeldStart(monkeypatch)
    viewer, widget = dock(iterations=100_000)
    assert widget.mode.currentData() == "local"
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()  # the local server starts...
    qtbot.waitUntil(held.starting.is_set, timeout=10_000)
    widget.cancel()  # ...too slowly: cancel, and use a remote server instead
    assert wait_for_run(qtbot, widget, timeout=10).status == "cancelled"
    _long_remote_run(widget, napari_server, qtbot)
    _local_start_ends_and_the_remote_run_goes_on(held, widget, napari_server, qtbot, notifications)


def test_a_local_check_overtaken_by_a_remote_run_is_dropped(
    napari_server: Any, dock: Any, qtbot: Any, monkeypatch: pytest.MonkeyPatch,
    notifications: list[Any], tiny_content: Any, tiny_style: Any,
) -> None:  # fmt: skip
    held = _HeldStart(monkeypatch)
    viewer, widget = dock(iterations=100_000)
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.check_server()  # Local: starts the local server in the background
    qtbot.waitUntil(held.starting.is_set, timeout=10_000)
    _long_remote_run(widget, napari_server, qtbot)
    status = widget.server_status.text()
    assert status.startswith(f"SERVING at {napari_server.address}")
    _local_start_ends_and_the_remote_run_goes_on(held, widget, napari_server, qtbot, notifications)
    qtbot.waitUntil(lambda: widget._check_worker is None, timeout=10_000)
    assert widget.server_status.text() == status  # not the local server's answer


def test_a_new_check_is_answered_while_an_older_one_still_waits(
    napari_server: Any, dock: Any, qtbot: Any, monkeypatch: pytest.MonkeyPatch,
    notifications: list[Any],
) -> None:  # fmt: skip
    """Check the local server, then, while it still starts, choose Remote and check again: the
    remote server's answer shows, and the local check's late answer does not replace it."""
    from impasto.local import LocalServer, LocalServerError

    starting, go = threading.Event(), threading.Event()

    def failing_start(server: Any) -> str:
        starting.set()
        go.wait(30)  # the weights loading, then a failure
        raise LocalServerError("the local server did not become ready in time:\n")

    monkeypatch.setattr(LocalServer, "start", failing_start)
    _, widget = dock()
    assert widget.mode.currentData() == "local"
    widget.check_server()
    qtbot.waitUntil(starting.is_set, timeout=10_000)
    local_check = widget._check_worker
    serving = f"SERVING at {napari_server.address}"
    try:
        use_remote(widget, napari_server.address)
        widget.check_server()
        qtbot.waitUntil(lambda: widget.server_status.text().startswith(serving), timeout=10_000)
    finally:
        with qtbot.waitSignal(local_check.finished, timeout=10_000):
            go.set()
    qtbot.wait(100)
    assert widget.server_status.text().startswith(serving)
    assert [n.message for n in notifications if n.severity.name in ("ERROR", "WARNING")] == []


def test_going_back_to_local_keeps_the_local_server_a_check_starts(
    dock: Any, qtbot: Any, monkeypatch: pytest.MonkeyPatch, notifications: list[Any]
) -> None:
    """Check the local server, look at Remote while it starts, and come back to Local: the
    server goes on starting, and the check shows it."""
    held = _HeldStart(monkeypatch)
    _, widget = dock()
    widget.check_server()
    qtbot.waitUntil(held.starting.is_set, timeout=10_000)
    check = widget._check_worker
    use_remote(widget, "127.0.0.1:1")
    widget.mode.setCurrentIndex(widget.mode.findData("local"))
    with qtbot.waitSignal(check.finished, timeout=120_000):
        held.go.set()
    qtbot.wait(100)
    (process,) = held.processes
    server = LOCAL_SERVERS.server
    assert server is not None and server.process is process and process.poll() is None
    assert widget.server_status.text().startswith(f"SERVING at {server.address}")
    assert [n.message for n in notifications if n.severity.name in ("ERROR", "WARNING")] == []
    widget.close_connection()  # nothing else uses it: it stops
    qtbot.waitUntil(lambda: process.poll() is not None, timeout=30_000)
    assert LOCAL_SERVERS.server is None


def test_wanting_the_local_server_while_it_starts_shares_that_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second panel that wants the local server while it starts waits for that start rather
    than starting another, and a release meanwhile (from the GUI thread) returns at once."""
    held = _HeldStart(monkeypatch)
    servers = _LocalServers()
    claims = [object(), object()]
    addresses: list[str] = []

    def acquire(claim: object) -> None:
        addresses.append(servers.acquire(claim, ()))

    threads = [threading.Thread(target=acquire, args=(claim,)) for claim in claims]
    try:
        threads[0].start()
        assert held.starting.wait(10)
        threads[1].start()
        releasing = threading.Thread(target=servers.release, args=(object(),))
        releasing.start()
        releasing.join(1.0)
        assert not releasing.is_alive()
    finally:
        held.go.set()
    for thread in threads:
        thread.join(120)
    (process,) = held.processes
    assert servers.server is not None and servers.server.process is process
    assert addresses == [servers.server.address] * 2
    servers.release(claims[0])
    assert process.poll() is None  # the other panel still uses it
    servers.release(claims[1])
    servers.stop()  # waits for the background stop
    assert process.poll() is not None and servers.server is None


def test_a_client_in_use_closes_only_when_its_job_ends(napari_server: Any) -> None:
    connection = Connection()
    first = connection.client(ServerChoice(mode="remote", address=napari_server.address))
    with connection.in_use(first):
        # another choice (the same server under another name) replaces it...
        port = napari_server.address.rsplit(":", 1)[1]
        second = connection.client(ServerChoice(mode="remote", address=f"localhost:{port}"))
        assert second is not first
        assert first.server_info().version  # ...but its channel stays open for the job
    with pytest.raises(ValueError, match="closed channel"):
        first.server_info()
    assert second.server_info().version
    connection.close()
    with pytest.raises(ValueError, match="closed channel"):
        second.server_info()
