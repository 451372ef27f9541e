"""The host memory that requests' images hold: counted from arrival to the stream's end,
bounded for the whole server, and no decoding for a call that has ended."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from impasto import images
from impasto.client import Client, ImpastoError, Queued, Result, Started
from impasto.v1 import style_transfer_pb2 as pb
from impasto_server import convert
from impasto_server.engine import Cancelled
from impasto_server.engine.memory import cgroup_memory
from impasto_server.held import HeldFull, HeldImages, default_capacity
from job_watch import LONG, SHORT, Watcher, wait_until


def test_the_oldest_request_is_taken_however_large_and_others_wait_for_room():
    pool = HeldImages(capacity=100)
    first, second = pool.claim(), pool.claim()
    first.take(60)
    first.take(90)  # the oldest: past the capacity, still taken
    assert pool.held == 150
    with pytest.raises(HeldFull) as info:
        second.take(1)
    assert (info.value.held, info.value.capacity) == (150, 100)
    assert pool.held == 150 and second.bytes == 0  # a refused take counts nothing
    first.release()
    first.release()  # once or more
    assert pool.held == 0
    second.take(100)
    with pytest.raises(HeldFull):
        first.take(1)  # 101 > 100, and taken again after its release it is the newest
    assert HeldImages(capacity=0).claim().take(1 << 40) is None  # 0: no limit


def test_requests_decoding_together_do_not_refuse_one_another_all():
    pool = HeldImages(capacity=100)
    claims = [pool.claim() for _ in range(3)]
    for claim in claims:
        claim.take(10)  # the requests' own bytes: each arrived before any image was decoded
    outcomes = []
    for claim in claims:  # each one's first image, 95 bytes
        try:
            claim.take(95)
            outcomes.append("taken")
        except HeldFull:
            claim.release()  # the request is refused, and lets go
            outcomes.append("refused")
    assert outcomes == ["taken", "refused", "refused"]  # the oldest goes on
    assert pool.held == 105


def test_the_default_is_a_quarter_of_a_containers_limit(tmp_path):
    host = default_capacity(tmp_path)  # no control group files: the host's memory
    assert cgroup_memory(tmp_path) is None and host >= 256 << 20
    (tmp_path / "memory.current").write_text(f"{100 << 20}\n")
    (tmp_path / "memory.max").write_text("max\n")  # cgroup v2, unlimited
    assert default_capacity(tmp_path) == host
    (tmp_path / "memory.max").write_text(f"{2 << 30}\n")  # a 2 GiB container
    assert cgroup_memory(tmp_path) == (2 << 30, 100 << 20)
    assert default_capacity(tmp_path) == min(host, 512 << 20)
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.usage_in_bytes").write_text(f"{100 << 20}\n")
    v1 = tmp_path / "memory" / "memory.limit_in_bytes"
    v1.write_text("9223372036854771712\n")  # cgroup v1, unlimited
    assert cgroup_memory(tmp_path) is None
    v1.write_text(f"{16 << 30}\n")
    assert default_capacity(tmp_path) == min(host, 4 << 30)
    v1.write_text(f"{512 << 20}\n")
    assert default_capacity(tmp_path) == 256 << 20  # the floor


def test_held_bytes_are_counted_while_the_job_lasts(
    make_server, shared_engine, tiny_content, tiny_style, monkeypatch
):
    server = make_server(max_running=1)
    held = server.service.held
    assert held.held == 0 and held.capacity == default_capacity()  # a quarter of the host's
    preparing = []
    prepare = shared_engine.prepare

    def prepare_noting_held(*args, **kwargs):
        preparing.append(held.held)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(shared_engine, "prepare", prepare_noting_held)
    with Client(server.address) as client:
        assert client.server_info().limits["max_held_bytes"] == held.capacity
        running = Watcher(client.stylize(tiny_content, [tiny_style], **LONG))
        running.wait_for(Started)
        decoded = tiny_content.nbytes + tiny_style.nbytes
        # the images, the request's own bytes, and the job's float32 copy of the content
        # (12 bytes a pixel, four times the decoded 3) until it ends
        kept = 4 * tiny_content.nbytes
        assert decoded + kept < held.held < 3 * decoded + kept
        # while the job was prepared, its float32 copies of the styles too
        assert preparing == [held.held + 4 * tiny_style.nbytes]
        running.job.cancel()
        assert running.done.wait(30)
    wait_until(lambda: held.held == 0)
    metric = server.metrics.registry.get_sample_value("impasto_held_image_bytes")
    assert metric == 0.0


def test_a_claim_counts_what_its_job_adds_without_refusing_it():
    pool = HeldImages(100)
    first, second = pool.claim(), pool.claim()
    first.take(60)
    second.add(80)  # a request taken already: its job's copies are counted, never refused
    assert pool.held == 140
    with pytest.raises(HeldFull):
        second.take(1)  # but it takes no more of its own past the limit
    second.add(-80)
    assert pool.held == 60
    second.release()
    second.add(50)  # after its release (the call ended while its job was prepared): ignored
    assert pool.held == 60 and second.bytes == 0
    first.release()
    assert pool.held == 0


def test_past_the_limit_a_request_waits_for_room(make_server, tiny_content, tiny_style):
    large = np.zeros((600, 600, 3), np.uint8)  # 1.03 MiB decoded, past a 1 MiB limit alone
    large[::7] = 255
    server = make_server(max_running=1, max_held_mb=1)
    with Client(server.address) as a, Client(server.address) as b:
        assert a.server_info().limits["max_held_bytes"] == 1 << 20
        running = Watcher(a.stylize(large, [tiny_style], **LONG))
        running.wait_for(Started)  # alone: taken
        with pytest.raises(ImpastoError) as info:
            b.stylize(tiny_content, [tiny_style], **SHORT).result()
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-held-mb" in info.value.message and "1 MiB" in info.value.message
        assert info.value.retry_after is not None and info.value.retry_after >= 1.0
        refused = server.metrics.registry.get_sample_value(
            "impasto_rejected_requests_total", {"reason": "host_memory"}
        )
        assert refused == 1.0
        running.job.cancel()
        assert running.done.wait(30)
        wait_until(lambda: server.service.held.held == 0)
        # room again: the same request goes through
        events = list(b.stylize(tiny_content, [tiny_style], **SHORT))
        assert isinstance(events[-1], Result)
        assert any(isinstance(event, Queued) for event in events)


def test_decoding_stops_for_a_call_that_ended(monkeypatch, tiny_content, tiny_style):
    request = pb.StylizeRequest(
        content=images.to_wire(tiny_content, "png"),
        styles=[pb.Style(image=images.to_wire(tiny_style, "png"), weight=1.0)] * 5,
    )
    decoded: list[str] = []
    from_wire = images.from_wire

    def counting(message, **kwargs):
        decoded.append(kwargs["field"])
        return from_wire(message, **kwargs)

    monkeypatch.setattr(images, "from_wire", counting)

    def ended(_image):
        if len(decoded) == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        convert.parse_request(request, convert.Limits(), on_image=ended)
    assert decoded == ["content", "styles[0].image"]  # the other four never decoded
    decoded.clear()
    parsed = convert.parse_request(request, convert.Limits(), on_image=lambda image: None)
    assert len(decoded) == 6 and len(parsed.styles) == 5
