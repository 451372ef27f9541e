"""Event order and content of one Stylize stream, and the result's forms."""

from __future__ import annotations

import numpy as np
import pytest
from impasto import images
from impasto.client import Progress, Queued, Result, Started

FAST = {"size": 32, "iterations": 4, "num_scales": 1}


def test_events_arrive_in_order_and_end_with_the_result(make_server, connect, tiny_content,
                                                        tiny_style):  # fmt: skip
    # Every iteration's progress event (the server's default paces them, see below).
    (client,) = connect(make_server(progress_rate=0), 1)
    events = list(client.stylize(tiny_content, [tiny_style], preview_interval=2, **FAST))
    kinds = [type(e) for e in events]
    assert kinds[-1] is Result
    started = kinds.index(Started)
    assert all(k is Queued for k in kinds[:started])
    assert all(k is Progress for k in kinds[started + 1 : -1])
    start = events[started]
    assert (start.height, start.width, start.total_iterations) == (27, 32, 4)
    assert start.device == "cpu" and start.job_id
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.iteration for p in progress] == [1, 2, 3, 4]
    assert all(p.total_iterations == 4 and p.scale_count == 1 for p in progress)
    assert set(progress[-1].losses) >= {"content", "style", "tv", "total"}
    assert [p.iteration for p in progress if p.preview is not None] == [2, 4]
    assert progress[1].preview.shape == (27, 32, 3) and progress[1].preview.dtype == np.uint8
    result = events[-1]
    assert result.job_id == start.job_id
    assert result.image.shape == (27, 32, 3) and result.image.dtype == np.uint8
    assert result.iterations == 4 and result.elapsed_seconds > 0
    assert isinstance(result.settings["seed"], int)
    assert not np.array_equal(result.image, images.as_array(tiny_content)[:27, :32])


def test_progress_is_paced_but_keeps_first_last_stage_starts_and_previews(
    make_server, connect, tiny_content, tiny_style
):
    job = {"size": 32, "iterations": 12, "num_scales": 2, "preview_interval": 5, "seed": 3}

    def progress(rate: float) -> list[Progress]:
        (client,) = connect(make_server(progress_rate=rate), 1)
        assert client.server_info().limits.get("progress_rate", 0) == rate
        events = list(client.stylize(tiny_content, [tiny_style], **job))
        assert isinstance(events[-1], Result) and events[-1].iterations == 12
        return [e for e in events if isinstance(e, Progress)]

    every = progress(0)
    assert [p.iteration for p in every] == list(range(1, 13))
    second_stage = min(p.iteration for p in every if p.scale_index == 1)
    assert 2 < second_stage < 12
    # One plain progress event a minute at most: only those that always go are left.
    paced = progress(1 / 60)
    assert [p.iteration for p in paced] == sorted({1, 5, 10, second_stage, 12})
    assert [p.iteration for p in paced if p.preview is not None] == [5, 10]
    assert [p.scale_index for p in paced] == [every[p.iteration - 1].scale_index for p in paced]


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 4])
def test_result_keeps_dtype_and_channels(client, tiny_content, tiny_style, dtype, channels):
    base = tiny_content.astype(np.float32) / 255.0
    gray = base.mean(axis=2)
    content = (
        gray if channels == 1 else np.dstack([base, np.linspace(0, 1, 48)[None, :].repeat(40, 0)])
    )
    content = (content * 65535).astype(np.uint16) if dtype == np.uint16 else content.astype(dtype)
    result = client.stylize(content, [tiny_style], **FAST).result()
    assert result.image.dtype == dtype
    assert result.image.shape == ((27, 32) if channels == 1 else (27, 32, 4))


def test_encoded_content_comes_back_as_png_by_default(client, tiny_content, tiny_style):
    request = client.build_request(
        images.encode(tiny_content, "png"), [images.encode(tiny_style, "jpeg")], **FAST
    )
    image = list(client._stub.Stylize(request, timeout=60))[-1].result.image
    assert image.encoded.startswith(b"\x89PNG")
    assert images.from_wire(image).shape == (27, 32, 3)


@pytest.mark.parametrize("form", ["raw", "png", "tiff", "jpeg"])
def test_output_format_is_honoured(server, tiny_content, tiny_style, form):
    from impasto.client import Client

    with Client(server.address) as c:
        request = c.build_request(tiny_content, [tiny_style], output_format=form, **FAST)
        call = c._stub.Stylize(request, timeout=60)
        messages = list(call)
    image = messages[-1].result.image
    assert image.WhichOneof("data") == ("raw" if form == "raw" else "encoded")
    if form != "raw":
        magic = {"png": b"\x89PNG", "tiff": (b"II*\x00", b"MM\x00*"), "jpeg": b"\xff\xd8"}[form]
        assert image.encoded.startswith(magic)
    assert images.from_wire(image).shape == (27, 32, 3)


def test_progress_rate_flag():
    from impasto_server.app import ServerConfig, parse_args

    assert parse_args([]).progress_rate == ServerConfig().progress_rate > 0
    assert parse_args(["--progress-rate", "0"]).progress_rate == 0
    for bad in ("-1", "20000"):
        with pytest.raises(SystemExit):
            parse_args(["--progress-rate", bad])
