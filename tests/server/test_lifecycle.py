"""Health while loading, serving and shutting down; reflection; metrics."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from impasto.client import Client, ImpastoError, Queued, Started
from job_watch import LONG, SHORT, Watcher, wait_until


def test_health_is_not_serving_until_the_model_is_loaded(make_server, tiny_content, tiny_style):
    server = make_server(load=False)
    with Client(server.address) as client:
        assert client.health() == "NOT_SERVING"
        assert client.health(service="impasto.v1.StyleTransferService") == "NOT_SERVING"
        with pytest.raises(ImpastoError) as info:
            client.stylize(tiny_content, [tiny_style], timeout=10, **SHORT).result()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "loading" in info.value.message
        counted = server.metrics.registry.get_sample_value(
            "impasto_rejected_requests_total", {"reason": "unavailable"}
        )
        assert counted is not None and counted >= 1  # the client's retries are counted too
        server.load()
        assert client.health() == "SERVING"
        assert client.stylize(tiny_content, [tiny_style], **SHORT).result().iterations == 2


def test_health_watches_take_no_place_of_jobs_or_checks(make_server, tiny_content, tiny_style):
    """Each open Watch counted as a call: 49 of them (what a few balancers and clients with
    health checking hold) left no room for Stylize, GetServerInfo or even Check."""
    from impasto_server.app import HEALTH_WATCHES

    server = make_server(queue_size=2, max_running=1)  # room for 19 calls besides watches
    channel = grpc.insecure_channel(server.address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        watches = [health.Watch(request, timeout=60) for _ in range(HEALTH_WATCHES)]
        for watch in watches:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            next(health.Watch(request, timeout=10))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "health watches are open" in info.value.details()
        with Client(server.address) as client:
            assert client.health() == "SERVING"
            assert client.server_info().running_jobs == 0
            client.stylize(tiny_content, [tiny_style], **SHORT).result()
        watches[0].cancel()  # a watch that ends gives its place back
        wait_until(lambda: _watch_opens(health, request))
    finally:
        channel.close()


def test_a_closing_watch_never_holds_up_the_server_while_health_is_being_set(make_server):
    """grpcio-health-checking sends a status to each watch holding its servicer's lock, and
    gRPC's polling thread, which completes those sends, ran the callback of a watch that
    closed, which waits for that lock: a status set as a watch closed hung the server for good
    (seen once as a shutdown that never returned). Here the lock is held, as a set in progress
    holds it, while a watch closes: the server must go on answering."""
    server = make_server()
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        watch = health.Watch(request, timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        with server.health._lock:  # a set() in progress
            watch.cancel()
            time.sleep(0.5)  # the close reaches the server, its callback runs
            with Client(server.address) as client:  # a call the polling thread must serve
                assert client.server_info(timeout=5).device == "cpu"
        wait_until(lambda: not server.health._send_response_callbacks.get("", ()))
    started = time.monotonic()
    server.shutdown(grace=0.0)  # sets NOT_SERVING: no watch left to tell
    assert time.monotonic() - started < 10


def _watch_opens(health, request) -> bool:
    watch = health.Watch(request, timeout=10)
    try:
        return next(watch).status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
    finally:
        watch.cancel()


def test_shutdown_drains_then_stops_running_jobs_with_unavailable(
    make_server, tiny_content, tiny_style
):
    server = make_server(grace_seconds=1.0)
    with (
        Client(server.address) as a,
        Client(server.address) as b,
        grpc.insecure_channel(server.address) as channel,
    ):
        # A health Watch opened before the drain (as a balancer or a probe agent holds one)
        # hears NOT_SERVING; the drain closes the port, so new calls cannot reach the server.
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        assert b.health() == "SERVING"
        running = Watcher(a.stylize(tiny_content, [tiny_style], **LONG))
        running.wait_for(Started)
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        began = time.monotonic()
        stopper.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        wait_until(lambda: not server.service.accepting, timeout=2)
        assert not running.done.is_set()  # draining, not stopped
        # A new call is refused at once (the port is closed), never left hanging; gRPC's
        # retries of it fail the same way.
        for call in (
            b.health,
            lambda: b.stylize(tiny_content, [tiny_style], timeout=5, **SHORT).result(),
        ):
            asked = time.monotonic()
            with pytest.raises(ImpastoError) as refused:
                call()
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - asked < 4.5
        assert running.done.wait(10)
        assert running.error.code == grpc.StatusCode.UNAVAILABLE
        assert running.error.reason == "SHUTDOWN"
        assert "shutting down" in running.error.message
        assert time.monotonic() - began >= 0.9  # the grace period was granted
        stopper.join(10)
        assert not stopper.is_alive()


def test_a_second_signal_stops_the_running_jobs_without_the_grace(tiny_content, tiny_style):
    """The first SIGTERM drains with the grace (here 60 s); an operator who sends another (or
    presses Ctrl-C twice) does not wait for it: running jobs end with SHUTDOWN now."""
    import signal

    from impasto.local import LocalServer

    with LocalServer(extra_args=("--grace-seconds", "60")) as server:
        assert server.process is not None
        with Client(server.address) as client:
            running = Watcher(client.stylize(tiny_content, [tiny_style], **LONG))
            running.wait_for(Started)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert not running.done.is_set()  # draining: the job may still finish
            hurried = time.monotonic()
            server.process.send_signal(signal.SIGINT)
            assert running.done.wait(10)
            assert running.error.reason == "SHUTDOWN"
            assert server.process.wait(15) == 0
            assert time.monotonic() - hurried < 15


def test_reflection_lists_the_service(server):
    with grpc.insecure_channel(server.address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "impasto.v1.StyleTransferService" in services
    assert "grpc.health.v1.Health" in services


def test_metrics_are_served(make_server, tiny_content, tiny_style):
    server = make_server(metrics_port=0)
    with Client(server.address) as client:
        client.stylize(tiny_content, [tiny_style], **SHORT).result()
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'impasto_jobs_total{outcome="ok"} 1.0' in text
    for name in ("impasto_queue_depth", "impasto_running_jobs", "impasto_job_duration_seconds",
                 "impasto_iterations_per_second", "impasto_device_memory_bytes"):  # fmt: skip
        assert name in text
    # a shutdown stops serving them too (a server embedded in a process may start again)
    server.shutdown(grace=0.0)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)
    again = make_server(metrics_port=server.metrics_port)
    assert again.metrics_port == server.metrics_port


def test_ports_in_use_are_named_at_start(make_server, shared_engine):
    from impasto_server.app import Server, ServerConfig

    taken = make_server(load=False).port
    for config, text in [
        ({"port": taken}, f"cannot listen on 127.0.0.1:{taken}: the port is in use"),
        ({"port": 0, "metrics_port": taken}, f"--metrics-port {taken}: cannot listen"),
    ]:
        server = Server(ServerConfig(host="127.0.0.1", **config), engine=shared_engine)
        with pytest.raises(OSError, match=text):
            server.start()
        server.shutdown(grace=0.0)


def test_cuda_graphs_on_a_cpu_server_is_a_clear_start_up_error():
    import subprocess
    import sys

    from impasto_server.app import parse_args

    assert parse_args([]).cuda_graphs is None  # on with a GPU, off without one
    assert parse_args(["--no-cuda-graphs"]).cuda_graphs is False
    done = subprocess.run(
        [sys.executable, "-m", "impasto_server.app", "--device", "cpu", "--cuda-graphs",
         "--port", "0"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot load the model" in done.stderr
    assert "CUDA graphs need a CUDA device" in done.stderr


def test_jobs_that_end_while_queued_are_counted_and_logged(
    make_server, tiny_content, tiny_style, caplog
):
    server = make_server(max_running=1)
    jobs = server.metrics.registry.get_sample_value
    with Client(server.address) as a, Client(server.address) as b:
        running = Watcher(a.stylize(tiny_content, [tiny_style], **LONG))
        running.wait_for(Started)
        waiting = Watcher(b.stylize(tiny_content, [tiny_style], **LONG))
        waiting.wait_for(Queued)
        with caplog.at_level("INFO", logger="impasto_server"):
            waiting.job.cancel()
            wait_until(lambda: jobs("impasto_jobs_total", {"outcome": "cancelled"}) == 1)
        running.job.cancel()
        wait_until(lambda: jobs("impasto_jobs_total", {"outcome": "cancelled"}) == 2)
    # its line has every field of a job's line, as a job that ran does
    (line,) = [r.getMessage() for r in caplog.records if "outcome=cancelled" in r.getMessage()]
    assert "size=27x32 iterations=0/100000 styles=1 " in line, line
    assert jobs("impasto_job_duration_seconds_count", {}) == 1  # only the job that ran


@pytest.mark.parametrize(
    "argv", [["--port", "99999"], ["--port", "-1"], ["--metrics-port", "65536"]]
)
def test_ports_outside_the_range_are_refused(argv, capsys):
    """gRPC would listen on 99999 modulo 65536 (34463) and say nothing of it."""
    from impasto_server.app import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert f"{argv[0]} must lie in [0, 65535]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        # GetServerInfo's Limits are uint32: this value failed every call after start-up
        (["--max-styles", "5000000000"], "--max-styles must lie in [1, 4294967295]"),
        # gRPC's message limit is an int32 of bytes: this one failed start-up with a traceback
        (["--max-message-mb", "2048"], "--max-message-mb must lie in [1, 2047]"),
        (["--max-batch-megapixels", "inf"], "--max-batch-megapixels must lie in"),
        (["--max-batch-megapixels", "0"], "--max-batch-megapixels must be > 0"),
        (["--job-memory-mb", "nan"], "--job-memory-mb must lie in"),
        (["--simulated-memory-mb", "-5"], "--simulated-memory-mb must lie in"),
        (["--cache-mb", "-5"], "--cache-mb must lie in"),
        (["--grace-seconds", "nan"], "--grace-seconds must lie in [0, 1000000]"),
        (["--grace-seconds", "-5"], "--grace-seconds must lie in [0, 1000000]"),
        (["--log-level", "BOGUS"], "--log-level must be one of DEBUG, INFO, WARNING, ERROR"),
        # alone, it left the port plaintext and asked no client for a certificate
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
    ],
)
def test_flag_values_the_server_cannot_hold_are_refused(argv, text, capsys):
    from impasto_server.app import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert text in capsys.readouterr().err
    assert parse_args(["--log-level", "debug", "--grace-seconds", "0"]).grace_seconds == 0


def test_start_names_the_metrics_port_and_a_port_file_it_cannot_write(
    make_server, tmp_path, caplog
):
    with caplog.at_level("INFO", logger="impasto_server"):
        server = make_server(load=False, metrics_port=0)  # a free port: the log says which
    assert server.metrics_port and f"metrics on port {server.metrics_port})" in caplog.text
    with pytest.raises(OSError, match=f"--port-file {tmp_path}/missing/port: No such file"):
        make_server(load=False, port_file=str(tmp_path / "missing" / "port"))
