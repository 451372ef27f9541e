"""napari tests: offscreen Qt on an Xvfb display (napari draws layers with OpenGL, which the
offscreen platform only offers through an X server), real servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import napari_helpers
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# When one pytest process also runs the server tests, torchvision gets imported after napari
# has made an OpenGL context, and that import crashes (a native library clash). Importing it
# first, when it is installed, avoids the clash; the plugin itself never imports torch.
with contextlib.suppress(ImportError):
    import torchvision  # noqa: F401


def _start_xvfb() -> None:
    """Give this test process its own X display when it has none, before Qt starts."""
    if os.environ.get("DISPLAY") or not shutil.which("Xvfb"):
        return
    read, write = os.pipe()
    # A watchdog shell stops Xvfb a second after this process has exited. Killing it from an
    # atexit handler instead would pull the display from under Qt, and Xlib ends a process whose
    # display vanishes with exit status 1, failing a suite that passed.
    script = (
        f"Xvfb -displayfd {write} -screen 0 1280x1024x24 -nolisten tcp & x=$!; "
        f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; kill $x"
    )
    subprocess.Popen(
        ["sh", "-c", script],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    if number:
        os.environ["DISPLAY"] = f":{number}"


_start_xvfb()


@pytest.fixture(autouse=True)
def _needs_display() -> None:
    if not os.environ.get("DISPLAY"):
        pytest.fail(
            "napari tests need an X display for OpenGL: install Xvfb "
            "(apt-get install xvfb) or run them under xvfb-run"
        )


@pytest.fixture(scope="session", autouse=True)
def _display_answers() -> None:
    """Before the first napari test makes the QApplication: Qt's offscreen platform opens the X
    display once, then, and without it the whole process has no OpenGL (every napari test then
    fails, the first with "QOpenGLWidget is not supported on this platform"). So wait until
    the display answers, up to 30 s, and otherwise fail once, naming it."""
    display = os.environ.get("DISPLAY")
    library = ctypes.util.find_library("X11")
    if not display or not library:
        return
    x11 = ctypes.CDLL(library)
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    deadline = time.monotonic() + 30.0
    while not (connection := x11.XOpenDisplay(None)):
        if time.monotonic() > deadline:
            pytest.fail(
                f"the X display {display} does not answer (XAUTHORITY="
                f"{os.environ.get('XAUTHORITY')}): napari would have no OpenGL"
            )
        time.sleep(0.5)
    x11.XCloseDisplay(connection)


@pytest.fixture(autouse=True)
def plugin_settings(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test saves its widget settings in its own folder, never the user's."""
    path = tmp_path / "impasto-napari.json"
    monkeypatch.setenv("IMPASTO_NAPARI_SETTINGS", str(path))
    monkeypatch.delenv("IMPASTO_TOKEN", raising=False)
    return path


@pytest.fixture(scope="session")
def napari_server() -> Iterator[Any]:
    """One real server for the napari tests, in its own process as the plugin's local mode
    runs it (torch and Qt's OpenGL do not share a process well), one job at a time."""
    from impasto.local import LocalServer

    with LocalServer(extra_args=("--max-running", "1", "--log-level", "WARNING")) as server:
        yield server


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server that wants the bearer token ``s3cret`` and makes results of at most 1024
    pixels."""
    from impasto.local import LocalServer

    token_file = tmp_path_factory.mktemp("token") / "tokens"
    token_file.write_text("s3cret\n")
    with LocalServer(
        extra_args=(
            "--token-file",
            str(token_file),
            "--max-pixels",
            "1024",
            "--log-level",
            "WARNING",
        )
    ) as server:
        yield server


@pytest.fixture
def notifications() -> Iterator[list[Any]]:
    """Every napari notification shown during the test, in order."""
    from napari.utils.notifications import notification_manager

    seen: list[Any] = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


@pytest.fixture
def dock(make_napari_viewer: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
    """``dock(server=None)`` -> (viewer, widget) docked from the manifest; with a server,
    the widget is set to remote mode at its address and to tiny, quick options."""

    def make(server: Any = None, **options: Any) -> tuple[Any, Any]:
        viewer = make_napari_viewer()
        _, widget = viewer.window.add_plugin_dock_widget("impasto", "impasto")
        if server is not None:
            napari_helpers.use_remote(widget, server.address)
        widget.set_options(**{"size": 32, "iterations": 4, "num_scales": 1, "seed": 7, **options})
        widget.preview_interval.setValue(0)
        return viewer, widget

    return make
