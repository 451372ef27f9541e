"""The widget's life: closing its panel or the viewer mid-run, hiding it, cancelling early."""

from __future__ import annotations

import gc
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from impasto.client import Client
from napari_helpers import add_content_and_style, use_remote, wait_for_run
from napari_impasto.connection import LOCAL_SERVERS


def _result_layers(viewer: Any) -> list[Any]:
    return [layer for layer in viewer.layers if "impasto" in layer.metadata]


def _running_jobs(address: str) -> int:
    with Client(address) as client:
        return client.server_info().running_jobs


def _start_a_long_run(server: Any, dock: Any, qtbot: Any, content: Any, style: Any) -> Any:
    viewer, widget = dock(server, iterations=100_000, size=32)
    add_content_and_style(viewer, content, style)
    widget.run()
    qtbot.waitUntil(lambda: "iteration" in widget.status.text(), timeout=60_000)
    assert _running_jobs(server.address) == 1
    return viewer, widget


def test_closing_the_panel_mid_run_cancels_the_job(
    napari_server: Any, dock: Any, qtbot: Any, tiny_content: Any, tiny_style: Any
) -> None:
    viewer, widget = _start_a_long_run(napari_server, dock, qtbot, tiny_content, tiny_style)
    connection = widget.connection
    # What the panel's X button does (QtViewerDockWidget.destroyOnClose): the widget is only
    # unparented, and here the test still holds it.
    viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: _running_jobs(napari_server.address) == 0, timeout=10_000)
    assert wait_for_run(qtbot, widget, timeout=30).status == "cancelled"
    assert connection._current is None and connection._held == []  # the channel was closed
    qtbot.wait(500)
    assert _result_layers(viewer) == []


def test_closing_an_unreferenced_panel_mid_run_cancels_the_job(
    napari_server: Any, dock: Any, qtbot: Any, tiny_content: Any, tiny_style: Any
) -> None:
    viewer, widget = _start_a_long_run(napari_server, dock, qtbot, tiny_content, tiny_style)
    viewer.window.remove_dock_widget(widget)
    del widget  # nothing references the widget now: Python collects it
    gc.collect()
    qtbot.waitUntil(lambda: _running_jobs(napari_server.address) == 0, timeout=10_000)
    qtbot.wait(500)
    assert _result_layers(viewer) == []


def test_hiding_the_panel_does_not_cancel_the_run(
    napari_server: Any, dock: Any, qtbot: Any, tiny_content: Any, tiny_style: Any
) -> None:
    viewer, widget = dock(napari_server, iterations=20)
    viewer.window._qt_window.show()  # so that hiding the panel sends real hide events
    add_content_and_style(viewer, tiny_content, tiny_style)
    panel = widget.parent()
    widget.run()
    qtbot.waitUntil(lambda: "iteration" in widget.status.text(), timeout=60_000)
    panel.toggleViewAction().trigger()  # what Window > impasto does: hide the panel
    assert not widget.isVisible()
    assert wait_for_run(qtbot, widget).status == "done", widget.last_outcome
    assert len(_result_layers(viewer)) == 1
    panel.toggleViewAction().trigger()
    assert widget.isVisible()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An address that accepts TCP connections but never answers (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_cancel_while_connecting_to_a_server_that_never_answers(
    silent_server: str, dock: Any, qtbot: Any, notifications: list[Any], tiny_content: Any,
    tiny_style: Any,
) -> None:  # fmt: skip
    viewer, widget = dock()
    use_remote(widget, silent_server)
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()
    qtbot.wait(500)
    started = time.monotonic()
    widget.cancel()
    outcome = wait_for_run(qtbot, widget, timeout=5)
    assert outcome.status == "cancelled", outcome.message
    assert time.monotonic() - started < 3
    assert [n for n in notifications if n.severity.name in ("ERROR", "WARNING")] == []
    assert widget.status.text() == "cancelled"


def test_closing_the_viewer_while_the_local_server_starts_stops_it(
    make_napari_viewer: Any, qtbot: Any, monkeypatch: pytest.MonkeyPatch, tiny_content: Any,
    tiny_style: Any,
) -> None:  # fmt: skip
    from impasto.local import LocalServer

    processes: list[Any] = []
    starting = threading.Event()
    closed = threading.Event()
    real_start = LocalServer.start

    def slow_start(self: Any) -> None:
        starting.set()
        closed.wait(30)  # the viewer closes while the server is still starting
        real_start(self)
        processes.append(self.process)

    monkeypatch.setattr(LocalServer, "start", slow_start)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("impasto", "impasto")
    widget.set_options(size=32, iterations=2, num_scales=1)
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()
    qtbot.waitUntil(starting.is_set, timeout=10_000)
    del widget
    viewer.close()
    qtbot.wait(500)  # the widget goes with the window
    closed.set()
    qtbot.waitUntil(lambda: bool(processes), timeout=120_000)
    (process,) = processes
    # It stops once it has started, rather than running until the interpreter exits.
    qtbot.waitUntil(lambda: process.poll() is not None, timeout=60_000)
    assert LOCAL_SERVERS.server is None


def _slow_to_stop(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """LocalServer.stop takes 3 s more (a server freeing a large GPU's memory); returns the
    list of the processes it has stopped."""
    from impasto.local import LocalServer

    stopped: list[Any] = []
    real_stop = LocalServer.stop

    def slow_stop(server: Any) -> Any:
        process = server.process
        time.sleep(3)
        code = real_stop(server)
        stopped.append(process)
        return code

    monkeypatch.setattr(LocalServer, "stop", slow_stop)
    return stopped


def test_letting_go_of_the_local_server_does_not_block_the_viewer(
    dock: Any, qtbot: Any, monkeypatch: pytest.MonkeyPatch, tiny_content: Any, tiny_style: Any
) -> None:
    """Closing the panel mid-run, or choosing Remote, stops the local server in the
    background: the GUI thread does not wait for it to exit."""
    stopped = _slow_to_stop(monkeypatch)
    viewer, widget = dock(iterations=100_000)
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()
    qtbot.waitUntil(lambda: "iteration" in widget.status.text(), timeout=120_000)
    process = LOCAL_SERVERS.server.process
    started = time.monotonic()
    viewer.window.remove_dock_widget(widget)
    assert time.monotonic() - started < 1.5
    assert wait_for_run(qtbot, widget, timeout=30).status == "cancelled"
    qtbot.waitUntil(lambda: stopped == [process], timeout=30_000)
    assert process.poll() is not None and LOCAL_SERVERS.server is None

    _, widget = viewer.window.add_plugin_dock_widget("impasto", "impasto")
    widget.set_options(iterations=2)
    widget.run()
    assert wait_for_run(qtbot, widget, timeout=120).status == "done", widget.last_outcome
    process = LOCAL_SERVERS.server.process
    started = time.monotonic()
    use_remote(widget, "127.0.0.1:1")  # the local server is no longer wanted
    assert time.monotonic() - started < 1.5
    qtbot.waitUntil(lambda: stopped[-1:] == [process], timeout=30_000)
    assert LOCAL_SERVERS.server is None


def test_choosing_remote_while_the_local_server_restarts_does_not_block_the_viewer(
    dock: Any, qtbot: Any, monkeypatch: pytest.MonkeyPatch, tiny_content: Any, tiny_style: Any
) -> None:
    """The local server died (killed for memory, say) and the next run starts it again, which
    takes seconds while the weights load: letting go of the old one (choosing Remote, or
    closing the panel) meanwhile does not wait for that start."""
    from impasto.local import LocalServer, LocalServerError

    viewer, widget = dock(iterations=2)
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()
    assert wait_for_run(qtbot, widget, timeout=120).status == "done", widget.last_outcome
    process = LOCAL_SERVERS.server.process
    process.kill()  # the local server dies; the widget still holds its client
    process.wait()

    starting, go, ended = threading.Event(), threading.Event(), threading.Event()

    def slow_start(server: Any) -> str:
        starting.set()
        try:
            go.wait(10)  # the weights loading
            raise LocalServerError("the local server did not become ready in time:\n")
        finally:
            ended.set()

    monkeypatch.setattr(LocalServer, "start", slow_start)
    try:
        widget.run()  # starts the local server again
        qtbot.waitUntil(starting.is_set, timeout=10_000)
        widget.cancel()
        assert wait_for_run(qtbot, widget, timeout=10).status == "cancelled"
        started = time.monotonic()
        use_remote(widget, "127.0.0.1:1")  # lets go of the dead server's client
        assert time.monotonic() - started < 1.0
    finally:
        go.set()
    qtbot.waitUntil(ended.is_set, timeout=15_000)
    assert LOCAL_SERVERS.server is None
