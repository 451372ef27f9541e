"""Run an impasto server as a child process on 127.0.0.1, so the caller never imports torch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from impasto.client import Client, ImpastoError


class LocalServerError(RuntimeError):
    """The local server did not start; the message carries the end of its log."""


class LocalServer:
    """``with LocalServer() as server: Client(server.address)``.

    Starts ``python -m impasto_server --host 127.0.0.1 --port 0 --port-file F``, waits until its
    health check says SERVING (the weights are loaded), and on exit sends SIGTERM, then kills it
    after ``grace`` seconds.
    """

    def __init__(
        self,
        port: int = 0,
        device: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 120.0,
        grace: float = 10.0,
        python: str | None = None,
    ) -> None:
        self.port = port
        self.device = device
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.grace = grace
        self.python = python or sys.executable
        self.process: subprocess.Popen[bytes] | None = None
        self.address: str | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _log_tail(self, limit: int = 4000) -> str:
        if self._dir is None:
            return ""
        try:
            return (Path(self._dir.name) / "server.log").read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def check(self) -> None:
        """Raise LocalServerError where this Python cannot run a server (a client-only
        install): said at once, before a child process fails to import."""
        if self.python == sys.executable and importlib.util.find_spec("torch") is None:
            raise LocalServerError(
                "a local server needs the server's packages, which this Python lacks (no "
                "torch): pip install 'impasto[server]', or use a running server"
            )

    def start(self) -> str:
        """Launch the server and block until it serves; return its address."""
        self.check()
        self._dir = tempfile.TemporaryDirectory(prefix="impasto-server-")
        port_file = Path(self._dir.name) / "port"
        command = [
            self.python,
            "-m",
            "impasto_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--port-file",
            str(port_file),
            "--grace-seconds",
            str(max(0.0, self.grace - 2.0)),
        ]
        if self.device:
            command += ["--device", self.device]
        command += list(self.extra_args)
        log = open(Path(self._dir.name) / "server.log", "wb")  # noqa: SIM115 - lives with process
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        try:
            while not port_file.exists() or not port_file.read_text().strip():
                self._check_alive()
                if time.monotonic() > deadline:
                    raise self._failed("did not open its port in time")
                time.sleep(0.05)
            self.address = f"127.0.0.1:{int(port_file.read_text().strip())}"
            with Client(self.address) as client:
                while True:
                    self._check_alive()
                    try:
                        if client.health(timeout=1.0) == "SERVING":
                            break
                    except ImpastoError:
                        pass  # not listening yet
                    if time.monotonic() > deadline:
                        raise self._failed("did not become ready in time")
                    time.sleep(0.1)
        except BaseException:  # a LocalServerError carries the log's tail
            self.stop()
            raise
        return self.address

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise self._failed(f"exited with code {self.process.returncode}")

    def _failed(self, how: str) -> LocalServerError:
        """The error's form, which napari's message reads: the reason on the first line, then
        the end of the server's log."""
        return LocalServerError(f"the local server {how}:\n{self._log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM, wait ``grace`` seconds, then kill; return the exit code."""
        process, self.process = self.process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.terminate()  # SIGTERM: the server shuts down gracefully
                try:
                    process.wait(self.grace)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            code = process.returncode
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        return code

    @property
    def log(self) -> str:
        return self._log_tail(1_000_000)
