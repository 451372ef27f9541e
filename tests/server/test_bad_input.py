"""Each kind of bad request is answered INVALID_ARGUMENT, naming the field, within a second,
and the server keeps serving."""

from __future__ import annotations

import io
import struct
import time
import zlib

import grpc
import numpy as np
import pytest
from impasto.client import ImpastoError
from impasto.v1 import style_transfer_pb2 as pb
from job_watch import SHORT
from PIL import Image


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge image but carries almost no data (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _webp() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buffer, "WEBP")
    return buffer.getvalue()


def _set(path: str, value):
    def mutate(request: pb.StylizeRequest) -> None:
        *parents, name = path.split(".")
        target = request
        for part in parents:
            target = getattr(target, part)
        setattr(target, name, value)

    return mutate


def _call(fn):
    def mutate(request: pb.StylizeRequest) -> None:
        fn(request)

    return mutate


CASES = {
    "byte count": (_set("content.raw.data", b"\0" * 10), "content.raw.data"),
    "zero height": (_set("content.raw.height", 0), "content.raw"),
    "two channels": (_set("content.raw.channels", 2), "content.raw.channels"),
    "no dtype": (_set("content.raw.dtype", pb.DATA_TYPE_UNSPECIFIED), "content.raw.dtype"),
    "no content": (_call(lambda r: r.ClearField("content")), "content"),
    "no styles": (_call(lambda r: r.ClearField("styles")), "styles"),
    "corrupt bytes": (_call(lambda r: setattr(r.styles[0].image, "encoded", b"junk")), "styles[0]"),
    "bomb": (
        _call(lambda r: setattr(r.styles[0].image, "encoded", _png_header_only(40000, 40000))),
        "styles[0].image.encoded",
    ),
    # the wire carries PNG, JPEG and TIFF: no other decoder of Pillow's reads a request
    "webp": (_call(lambda r: setattr(r.styles[0].image, "encoded", _webp())), "styles[0].image"),
    "size": (_set("options.size", 5), "options.size"),
    "iterations": (_set("options.iterations", 0), "options.iterations"),
    "layer": (
        _call(lambda r: r.options.style_layers.add(layer="conv9_9", weight=1.0)),
        "options.style_layers",
    ),
    "layer twice": (
        _call(lambda r: [r.options.style_layers.add(layer="conv1_1", weight=w) for w in (1, 2)]),
        "options.style_layers[1].layer",
    ),
    "negative weight": (_set("options.content_weight", -1.0), "options.content_weight"),
    "nan style weight": (
        _call(lambda r: setattr(r.styles[0], "weight", float("nan"))),
        "styles[0]",
    ),
    "enum": (_set("options.pooling", 42), "options.pooling"),
    # size (32) is the last stage: a scale above it would make the schedule shrink
    "scale above size": (_call(lambda r: r.options.scales.extend([24, 48])), "options.scales"),
    # eight scales below size, and size's own: nine stages
    "nine stages": (_call(lambda r: r.options.scales.extend(range(16, 24))), "options.scales"),
    # float16 runs on GPUs only (bfloat16 runs on CPUs with native support too)
    "precision": (_set("options.precision", pb.PRECISION_FLOAT16), "options.precision"),
    "init image missing": (_set("options.init", pb.INIT_IMAGE), "init_image"),
    "preview size": (_set("preview_size", 3), "preview_size"),
    "mask aspect": (
        _call(
            lambda r: (
                r.mask.labels.raw.CopyFrom(
                    pb.RawImage(
                        height=10, width=40, channels=1, dtype=pb.DATA_TYPE_UINT8, data=bytes(400)
                    )
                ),
                r.mask.regions.add(label=0, style_index=0),
            )
        ),
        "mask.labels",
    ),
    "region style": (
        _call(
            lambda r: (
                r.mask.labels.raw.CopyFrom(
                    pb.RawImage(
                        height=40,
                        width=48,
                        channels=1,
                        dtype=pb.DATA_TYPE_UINT8,
                        data=bytes(40 * 48),
                    )
                ),
                r.mask.regions.add(label=0, style_index=5),
            )
        ),
        "mask.regions[0].style_index",
    ),
    "nan pixels": (
        _call(
            lambda r: r.content.raw.CopyFrom(
                pb.RawImage(
                    height=40,
                    width=48,
                    channels=1,
                    dtype=pb.DATA_TYPE_FLOAT32,
                    data=np.full((40, 48), np.nan, np.float32).tobytes(),
                )
            )
        ),
        "content.raw.data",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_is_refused_quickly_and_the_server_keeps_serving(
    client, tiny_content, tiny_style, case
):
    mutate, field = CASES[case]
    request = client.build_request(tiny_content, [tiny_style], **SHORT)
    mutate(request)
    started = time.monotonic()
    with pytest.raises(ImpastoError) as info:
        client.submit(request, timeout=10).result()
    assert time.monotonic() - started < 1.0
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = [f for f, _ in info.value.field_violations]
    assert any(f.startswith(field) for f in fields), fields
    assert client.stylize(tiny_content, [tiny_style], **SHORT).result().iterations == 2


def test_result_above_the_pixel_limit_is_refused(make_server, tiny_content, tiny_style):
    from impasto.client import Client

    server = make_server(max_pixels=32 * 32)
    with Client(server.address) as client:
        with pytest.raises(ImpastoError) as info:
            client.stylize(tiny_content, [tiny_style], size=64, iterations=1).result()
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.field_violations[0][0] == "options.size"


def test_a_result_too_large_for_a_message_is_refused_before_it_runs(
    make_server, tiny_content, tiny_style
):
    """Not lost once its work is done, as it was (the send failed RESOURCE_EXHAUSTED)."""
    from impasto.client import Client

    server = make_server(max_message_mb=1)
    rgba = np.random.default_rng(0).random((48, 48, 4), dtype=np.float32)  # raw: 16 B a pixel
    with Client(server.address) as client:
        with pytest.raises(ImpastoError) as info:
            client.stylize(rgba, [tiny_style], size=300, iterations=1, num_scales=1).result()
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        (violation,) = info.value.field_violations
        assert violation[0] == "options.size"
        assert "above this server's message limit of 1048576" in violation[1]
        assert server.scheduler.queued == 0 and not server.scheduler._per_client
        # as 16-bit PNG it fits, and it arrives (with previews no larger than itself)
        previews = []
        job = client.stylize(rgba, [tiny_style], size=200, iterations=2, num_scales=1,
                             output_format="png", preview_interval=1, preview_size=8192)  # fmt: skip
        for event in job:
            if getattr(event, "preview", None) is not None:
                previews.append(event.preview.shape)
        assert job.result().image.shape == (200, 200, 4)
        assert previews and all(max(shape[:2]) <= 200 for shape in previews)


def test_more_mask_regions_than_the_limit_are_refused(make_server, tiny_content, tiny_style):
    from impasto.client import Client

    server = make_server(max_regions=3)
    labels = (np.arange(40 * 48) % 5).astype(np.uint8).reshape(40, 48)
    with Client(server.address) as client:
        assert client.server_info().limits["max_regions"] == 3
        with pytest.raises(ImpastoError) as info:
            client.stylize(tiny_content, [tiny_style], mask=labels,
                           region_styles={1: 0, 2: 0, 3: 0, 4: 0}, **SHORT).result()  # fmt: skip
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.field_violations == [
            ("mask.regions", "at most 3 regions per request, not 4")
        ]
        client.stylize(tiny_content, [tiny_style], mask=labels,
                       region_styles={1: 0, 2: 0, 3: 0}, **SHORT).result()  # fmt: skip


def test_a_refused_request_is_logged(client, tiny_content, tiny_style, caplog):
    request = client.build_request(tiny_content, [tiny_style], **SHORT)
    request.options.size = 0
    with caplog.at_level("INFO", logger="impasto_server"), pytest.raises(ImpastoError):
        client.submit(request, timeout=10).result()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert "reason=invalid: options.size: 0 is outside [16, 8192]" in line, line


def test_every_option_out_of_range_is_named(client, tiny_content, tiny_style):
    """A client fixes its request once: BadRequest names every option the server refuses."""
    request = client.build_request(tiny_content, [tiny_style], **SHORT)
    request.options.size = 0
    request.options.iterations = 0
    request.options.content_weight = -1.0
    request.options.style_scale = 9.0
    request.styles[0].weight = -1.0
    with pytest.raises(ImpastoError) as info:
        client.submit(request, timeout=10).result()
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = [f for f, _ in info.value.field_violations]
    assert fields == ["styles[0].weight", "options.size", "options.iterations",
                      "options.content_weight", "options.style_scale"], fields  # fmt: skip
    messages = dict(info.value.field_violations)
    assert messages["options.style_scale"] == "9.0 is outside [0.1, 4.0]"


def test_a_size_out_of_range_is_named_once(client, tiny_content, tiny_style):
    """scales are compared with size only when size is valid: 8 px with scales [16] is size's
    mistake, not also a scale above size."""
    request = client.build_request(tiny_content, [tiny_style], **SHORT)
    request.options.size = 8
    request.options.scales[:] = [16]
    with pytest.raises(ImpastoError) as info:
        client.submit(request, timeout=10).result()
    assert [f for f, _ in info.value.field_violations] == ["options.size"]
