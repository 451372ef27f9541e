"""Calls their client left without a word: cancelled while the request was checked, or no
longer read. Neither keeps a job running, nor a server thread, for no one."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from impasto.client import Client, ImpastoError
from job_watch import LONG, SHORT, wait_until

# A small window of a fixed size: a few previews fill it.
_SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]


class _CheckedSlowly:
    """The shared engine, whose check of a request waits until the test lets it go on: the
    window in which a client may leave before its job is queued."""

    def __init__(self, engine):
        self._engine = engine
        self.checking = threading.Event()
        self.go_on = threading.Event()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def validate(self, *args, **kwargs):
        self.checking.set()
        self.go_on.wait(10)
        return self._engine.validate(*args, **kwargs)


def _previewed(client, style):
    """A job with a raw 96 px preview at every iteration: far more than the window holds."""
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    return client.stylize(noise, [style], size=96, iterations=40, num_scales=1,
                          preview_interval=1, output_format="raw")  # fmt: skip


def _jobs(server, outcome: str) -> float:
    return server.metrics.jobs.labels(outcome=outcome)._value.get()


def _unsent(server) -> float:
    return server.metrics.unsent._value.get()


def test_a_call_cancelled_while_its_request_is_checked_runs_no_job(
    make_server, shared_engine, tiny_content, tiny_style
):
    engine = _CheckedSlowly(shared_engine)
    server = make_server(engine=engine)
    with Client(server.address) as client:
        job = client.stylize(tiny_content, [tiny_style], **LONG)
        assert engine.checking.wait(10)
        job.cancel()
        time.sleep(0.2)  # the cancel reaches the server while it still checks
        engine.go_on.set()
        with pytest.raises(ImpastoError):
            job.result()
    # queued, then stopped at once (it ran for no one until it ended, 100000 iterations on)
    wait_until(lambda: server.scheduler.running == 0 and server.scheduler.queued == 0, 5)
    wait_until(lambda: _jobs(server, "cancelled") == 1, 5)
    assert _jobs(server, "ok") == 0


def test_a_stream_left_unread_after_its_job_ended_is_cancelled_after_the_grace(
    make_server, tiny_content, tiny_style
):
    """A client that stops reading fills HTTP/2's window: the server's send then waits for
    as long as the client stays connected, holding one of the server's threads."""
    server = make_server(unread_grace_seconds=1.0, progress_rate=0)
    with Client(server.address, channel_options=_SMALL_WINDOW) as client:
        job = _previewed(client, tiny_style)
        wait_until(lambda: _jobs(server, "ok") == 1, 60)  # ended, never read
        wait_until(lambda: server.metrics.unread._value.get() == 1, 10)
        with pytest.raises(ImpastoError) as ended:
            job.result()  # what the window held, then the cancel
        assert ended.value.code == grpc.StatusCode.CANCELLED
        # a client that reads gets its result, the grace notwithstanding
        assert client.stylize(tiny_content, [tiny_style], **SHORT).result()
    assert server.metrics.unread._value.get() == 1
    assert _unsent(server) == 1  # the unread one's result; the one read was sent


def test_a_client_that_reads_its_stream_slowly_gets_its_result(
    make_server, tiny_content, tiny_style
):
    """The grace counts from the last message sent, not from the job's end: a client on a
    slow link still draining the previews held for it is not cut off."""
    server = make_server(unread_grace_seconds=1.0, progress_rate=0)
    with Client(server.address, channel_options=_SMALL_WINDOW) as client:
        job = _previewed(client, tiny_style)
        wait_until(lambda: _jobs(server, "ok") == 1, 60)
        started = time.monotonic()
        for _event in job:
            time.sleep(0.4)  # each read frees the window for one more send
        assert job.result().image.shape == (96, 96, 3)
        assert time.monotonic() - started > 1.0  # read for longer than the grace
    assert server.metrics.unread._value.get() == 0
    assert _unsent(server) == 0


def test_a_result_made_after_its_call_ended_counts_as_unsent(
    make_server, tiny_content, tiny_style, monkeypatch, caplog
):
    """A job whose last iteration was done when its client left still ends ok (its work was
    done), but its result reaches no one: the metrics and the log say so, once."""
    from impasto_server.engine import transfer

    copying, go_on = threading.Event(), threading.Event()
    download = transfer.Engine._download

    def held(self, images):  # the batch's results are being made when the client leaves
        copying.set()
        go_on.wait(10)
        return download(self, images)

    monkeypatch.setattr(transfer.Engine, "_download", held)
    server = make_server()
    with Client(server.address) as client:
        job = client.stylize(tiny_content, [tiny_style], **SHORT)
        assert copying.wait(30)
        job.cancel()
        wait_until(lambda: not server.service._open, 5)  # the server saw the call end
        go_on.set()
        with pytest.raises(ImpastoError):
            job.result()
    wait_until(lambda: _jobs(server, "ok") == 1, 10)
    wait_until(lambda: _unsent(server) == 1, 5)
    time.sleep(0.2)
    assert _unsent(server) == 1  # counted once, by whichever side saw it last
    assert "its result was made but not sent" in caplog.text
