"""Event order and content of one Stylize stream, and the result's forms."""

from __future__ import annotations

import numpy as np
import pytest
from impasto import images
from impasto.client import Progress, Queued, Result, Started

FAST = {"size": 32, "iterations": 4, "num_scales": 1}


def test_events_arrive_in_order_and_end_with_the_result(client, tiny_content, tiny_style):
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
