"""Failures become napari notifications (never a traceback), and no work is lost."""

from __future__ import annotations

import socket
from typing import Any

import grpc
import pytest
from impasto.client import ImpastoError
from napari_helpers import add_content_and_style, use_remote, wait_for_run
from napari_impasto.connection import describe_error


def _errors(notifications: list[Any]) -> list[str]:
    return [str(n.message) for n in notifications if n.severity.name in ("ERROR", "WARNING")]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_server_names_the_address(
    dock: Any, qtbot: Any, notifications: list[Any], tiny_content: Any, tiny_style: Any
) -> None:
    viewer, widget = dock()
    address = f"127.0.0.1:{_closed_port()}"
    use_remote(widget, address)
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()
    outcome = wait_for_run(qtbot, widget, timeout=60)
    assert outcome.status == "failed"
    (message,) = _errors(notifications)
    assert "cannot reach" in message and address in message
    assert widget.run_button.isEnabled()  # ready for another try

    # The server check says the same, in the status line and a notification.
    widget.check_server()
    qtbot.waitUntil(lambda: widget.server_status.text() == "unreachable", timeout=30_000)
    assert address in _errors(notifications)[-1]


def test_bad_token_is_unauthenticated_and_the_right_one_runs(
    token_server: Any, dock: Any, qtbot: Any, notifications: list[Any], tiny_content: Any,
    tiny_style: Any,
) -> None:  # fmt: skip
    viewer, widget = dock()
    use_remote(widget, token_server.address, token="wrong")
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()
    assert wait_for_run(qtbot, widget).status == "failed"
    (message,) = _errors(notifications)
    assert "refused the token" in message and token_server.address in message

    widget.token.setText("s3cret")
    widget.run()
    outcome = wait_for_run(qtbot, widget)
    assert outcome.status == "done", outcome.message
    assert any("impasto" in layer.metadata for layer in viewer.layers)


def test_check_server_says_when_the_token_would_be_refused(
    token_server: Any, dock: Any, qtbot: Any, notifications: list[Any]
) -> None:
    _viewer, widget = dock()
    for token, words in (("", "token needed"), ("wrong", "token not valid")):
        use_remote(widget, token_server.address, token=token)
        widget.server_status.setText("")
        widget.check_server()
        qtbot.waitUntil(lambda: "SERVING" in widget.server_status.text(), timeout=30_000)
        assert widget.server_status.text().endswith(f" · {words}")
        assert token_server.address in _errors(notifications)[-1]
    warned = len(_errors(notifications))
    use_remote(widget, token_server.address, token="s3cret")
    widget.server_status.setText("")
    widget.check_server()
    qtbot.waitUntil(lambda: "SERVING" in widget.server_status.text(), timeout=30_000)
    assert "token" not in widget.server_status.text()
    assert len(_errors(notifications)) == warned


def test_check_server_with_tls_against_a_plaintext_server_points_at_tls(
    token_server: Any, dock: Any, qtbot: Any, notifications: list[Any]
) -> None:
    """gRPC's message names the last address it tried (localhost's IPv6, refused, say): the
    port is probed, and the message says it answers but not over TLS."""
    _viewer, widget = dock()
    use_remote(widget, token_server.address, token="s3cret")
    widget.tls.setChecked(True)
    widget.check_server()
    qtbot.waitUntil(lambda: widget.server_status.text() == "unreachable", timeout=30_000)
    message = _errors(notifications)[-1]
    assert f"{token_server.address} accepts connections, but TLS with it failed" in message


def test_unreachable_messages_tell_tls_from_no_server() -> None:
    lost = ImpastoError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        assert "but not gRPC without TLS" in describe_error(lost, address, tls=False)
        assert "but TLS with it failed" in describe_error(lost, address, tls=True)
        assert "accepts" not in describe_error(lost, address)  # not asked to probe
    said = describe_error(lost, address, tls=False)  # closed now
    assert f"cannot reach the server at {address}: nothing accepts connections there" in said


def test_image_too_large_for_the_server(
    token_server: Any, dock: Any, qtbot: Any, notifications: list[Any], tiny_content: Any,
    tiny_style: Any,
) -> None:  # fmt: skip
    viewer, widget = dock(size=64)
    use_remote(widget, token_server.address, token="s3cret")
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()
    assert wait_for_run(qtbot, widget).status == "failed"
    (message,) = _errors(notifications)
    assert "rejected" in message and "limit of 1024" in message


def test_job_too_large_for_the_servers_memory(
    make_server: Any, dock: Any, qtbot: Any, notifications: list[Any], tiny_content: Any,
    tiny_style: Any,
) -> None:  # fmt: skip
    server = make_server(simulated_memory_mb=64)
    viewer, widget = dock(size=256)
    use_remote(widget, server.address)
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()
    assert wait_for_run(qtbot, widget).status == "failed"
    (message,) = _errors(notifications)
    assert "does not fit the memory of the server" in message and "Lower the size" in message
    assert "the largest result that fits" in message
    assert not any("impasto" in layer.metadata for layer in viewer.layers)
    assert widget.run_button.isEnabled()


def test_bad_option_value_is_refused_before_sending(
    dock: Any, notifications: list[Any], tiny_content: Any, tiny_style: Any
) -> None:
    viewer, widget = dock()
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.tv_weight.setText("a lot")
    widget.run()
    assert widget.run_state is None  # nothing started
    assert "tv weight must be a number" in _errors(notifications)[-1]


def test_no_layers_is_a_notification(dock: Any, notifications: list[Any]) -> None:
    _, widget = dock()
    widget.run()
    assert widget.run_state is None
    assert "choose a content layer" in _errors(notifications)[-1]


@pytest.mark.parametrize(
    ("deleted", "warning"),
    [
        ("content", "the content layer 'content' was deleted during the run"),
        ("style", "the style layer(s) 'style' were deleted during the run"),
    ],
)
def test_a_layer_deleted_during_the_run_keeps_the_result_with_a_warning(
    napari_server: Any, dock: Any, qtbot: Any, notifications: list[Any], tiny_content: Any,
    tiny_style: Any, deleted: str, warning: str,
) -> None:  # fmt: skip
    viewer, widget = dock(napari_server, iterations=30)
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()
    assert wait_for_run(qtbot, widget).status == "done"
    assert _errors(notifications) == []  # the layers still there: nothing to warn of
    widget.run()
    qtbot.waitUntil(lambda: "iteration" in widget.status.text(), timeout=60_000)
    viewer.layers.remove(deleted)
    assert wait_for_run(qtbot, widget).status == "done"
    results = [layer for layer in viewer.layers if "impasto" in layer.metadata]
    assert len(results) == 2 and results[-1].metadata["impasto"]["content"] == "content"
    assert any(warning in m for m in _errors(notifications)), _errors(notifications)


def test_messages_for_a_full_queue_and_bad_fields() -> None:
    full = ImpastoError(grpc.StatusCode.RESOURCE_EXHAUSTED, "the queue is full", retry_after=2.0)
    assert "queue is full" in describe_error(full, "h:1") and "2 s" in describe_error(full, "h:1")
    bad = ImpastoError(
        grpc.StatusCode.INVALID_ARGUMENT, "invalid request", [("options.size", "too small")]
    )
    assert "options.size: too small" in describe_error(bad, "h:1")


def test_a_local_server_that_did_not_start_is_described_by_its_errors() -> None:
    from impasto.local import LocalServerError

    log = [
        "2026-11-28 00:04:50,035 INFO impasto_server listening on 127.0.0.1:44605",
        "2026-11-28 00:04:50,036 ERROR impasto_server cannot load the model: no CUDA",
        *[f"2026-11-28 00:04:50,040 INFO impasto_server shutting down, step {i}" for i in range(4)],
    ]
    exited = describe_error(
        LocalServerError("the local server exited with code 2:\n" + "\n".join(log)), ""
    )
    assert exited.startswith("impasto: the local server did not start: the local server exited")
    assert "cannot load the model: no CUDA" in exited and "shutting down" not in exited
    late = describe_error(
        LocalServerError("the local server did not become ready in time:\n" + log[0]), ""
    )
    assert "did not become ready in time / " in late and late.endswith("127.0.0.1:44605")


def test_local_mode_without_the_server_packages_says_what_to_install(monkeypatch) -> None:
    """napari installed with the plugin alone (no torch): Local mode's message says what to
    install, from LocalServer's own check, before any child process."""
    import impasto.local

    real = impasto.local.importlib.util.find_spec
    monkeypatch.setattr(
        impasto.local.importlib.util, "find_spec",
        lambda name, *a: None if name == "torch" else real(name, *a),
    )  # fmt: skip
    with pytest.raises(impasto.local.LocalServerError) as failed:
        impasto.local.LocalServer().start()
    said = describe_error(failed.value, "")
    assert said.startswith("impasto: the local server did not start: ")
    assert "pip install 'impasto[server]'" in said


def test_messages_by_reason() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    shutdown = ImpastoError(unavailable, "the server is shutting down", reason="SHUTDOWN")
    assert "shut down during the job" in describe_error(shutdown, "h:1", during_job=True)
    lost = ImpastoError(unavailable, "Socket closed")
    assert "lost the connection to the server at h:1" in describe_error(
        lost, "h:1", during_job=True
    )
    assert "cannot reach the server at h:1" in describe_error(lost, "h:1")
    memory = ImpastoError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "ran out of memory", reason="OUT_OF_MEMORY"
    )
    text = describe_error(memory, "h:1", during_job=True)
    assert "out of device memory" in text and "Reduce the size" in text
    internal = ImpastoError(grpc.StatusCode.INTERNAL, "boom", reason="INTERNAL")
    assert "internal error" in describe_error(internal, "h:1") and "boom" in describe_error(
        internal, "h:1"
    )
    deadline = ImpastoError(grpc.StatusCode.DEADLINE_EXCEEDED, "late", reason="DEADLINE")
    assert "fewer iterations" in describe_error(deadline, "h:1")


def test_server_killed_mid_job_then_restarted(
    dock: Any, qtbot: Any, notifications: list[Any], tiny_content: Any, tiny_style: Any
) -> None:
    """SIGKILL while a job runs: the widget says the connection to that address was lost, is
    usable again, and a run against the server restarted on the same port succeeds."""
    import os
    import signal

    from impasto.local import LocalServer

    local = LocalServer(port=_closed_port(), extra_args=("--log-level", "WARNING"), grace=3)
    local.start()
    try:
        viewer, widget = dock(local, iterations=100_000)
        add_content_and_style(viewer, tiny_content, tiny_style)
        widget.run()
        qtbot.waitUntil(lambda: "iteration" in widget.status.text(), timeout=60_000)
        assert local.process is not None
        os.kill(local.process.pid, signal.SIGKILL)
        outcome = wait_for_run(qtbot, widget, timeout=30)
        assert outcome.status == "failed"
        (message,) = _errors(notifications)
        assert "lost the connection to the server at" in message, message
        assert local.address in message and "during the job" in message
        assert "cannot reach" not in message
        assert widget.run_button.isEnabled()
        local.stop()

        local = LocalServer(port=local.port, extra_args=("--log-level", "WARNING"), grace=3)
        local.start()
        widget.set_options(iterations=4)
        widget.run()
        outcome = wait_for_run(qtbot, widget)
        assert outcome.status == "done", outcome.message
        assert any("impasto" in layer.metadata for layer in viewer.layers)
    finally:
        local.stop()


def test_a_seed_that_is_no_whole_number_is_refused_before_sending(
    dock: Any, notifications: list[Any], tiny_content: Any, tiny_style: Any
) -> None:
    viewer, widget = dock()
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.seed.setText("²")  # a digit to str.isdigit, but no number to int()
    widget.run()
    assert widget.run_state is None
    assert "seed must be a whole number" in _errors(notifications)[-1]
