"""Bad input raises EngineError naming the field, before any work is done."""

from __future__ import annotations

import math

import numpy as np
import pytest
from impasto_server.engine import Engine, EngineError, StyleOptions


def check(engine: Engine, field: str, content=None, styles=None, options=None, **kwargs):
    content = np.zeros((64, 64, 3), np.uint8) if content is None else content
    styles = [np.zeros((32, 32, 3), np.uint8)] if styles is None else styles
    options = options or StyleOptions.from_preset("default", size=32, iterations=2)
    with pytest.raises(EngineError) as info:
        engine.validate(content, styles, options, **kwargs)
    assert info.value.field == field, str(info.value)
    # run() refuses the same way, before yielding anything
    with pytest.raises(EngineError):
        next(iter(engine.run(content, styles, options, **kwargs)))
    return str(info.value)


def opts(**kw) -> StyleOptions:
    return StyleOptions.from_preset("default", size=32, iterations=2).replace(**kw)


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("iterations", dict(iterations=0)),
        ("size", dict(size=0)),
        ("size", dict(size=10**6)),
        ("content_weight", dict(content_weight=math.nan)),
        ("style_weight", dict(style_weight=-1.0)),
        ("tv_weight", dict(tv_weight=math.inf)),
        ("style_layers", dict(style_layers={"conv9_9": 1.0})),
        ("content_layers", dict(content_layers={})),
        ("style_layers.conv1_1", dict(style_layers={"conv1_1": -2.0})),
        ("init", dict(init="zeros")),
        ("optimizer", dict(optimizer="sgd")),
        ("pooling", dict(pooling="min")),
        ("color_preservation", dict(color_preservation="sepia")),
        ("scales", dict(scales=(64, 32))),
        ("precision", dict(precision="float16")),  # the CPU runs float32 (and bfloat16)
        ("seed", dict(seed=-1)),
        ("learning_rate", dict(learning_rate=0.0)),
    ],
)
def test_bad_options(engine, field, changes):
    check(engine, field, options=opts(**changes))


def test_unknown_option_and_preset():
    with pytest.raises(EngineError, match="unknown option") as info:
        StyleOptions.from_preset("default", colour="red")
    assert info.value.field == "colour"
    with pytest.raises(EngineError) as info:
        StyleOptions.from_preset("fancy")
    assert info.value.field == "preset"


def test_bad_images(engine):
    assert "empty" in check(engine, "content", content=np.zeros((0, 5, 3), np.uint8))
    check(engine, "content", content=np.zeros((8, 8, 2), np.uint8))
    check(engine, "content", content=np.zeros((8, 8, 3), np.int8))
    nan = np.zeros((8, 8), np.float32)
    nan[1, 1] = np.nan
    assert "NaN" in check(engine, "content", content=nan)
    check(engine, "content", content=[[1, 2], [3, 4]])
    check(engine, "styles", styles=[])
    check(engine, "styles[1]", styles=[np.zeros((9, 9, 3), np.uint8), np.zeros((9, 0), np.uint8)])
    # an elongated content whose short side would fall under VGG19's 16 px
    check(engine, "size", content=np.zeros((10, 400, 3), np.uint8))


def test_pixel_limit_is_configurable():
    small = Engine(device="cpu", max_pixels=32 * 32 - 1)
    assert "limit" in check(small, "size")


def test_bad_blend_weights_masks_and_init(engine):
    two = [np.zeros((32, 32, 3), np.uint8)] * 2
    check(engine, "style_weights", styles=two, style_weights=[1.0])
    check(engine, "style_weights[0]", styles=two, style_weights=[math.nan, 1.0])
    check(engine, "style_weights[1]", styles=two, style_weights=[1.0, -1.0])
    check(engine, "style_weights", styles=two, style_weights=[0.0, 0.0])
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 1
    check(engine, "mask", mask=mask[:10], region_styles={0: 0})
    check(engine, "mask", mask=mask.astype(np.float32), region_styles={0: 0})
    check(engine, "region_styles", mask=mask)
    check(engine, "region_styles", mask=mask, region_styles={0: 5})
    missing = check(engine, "region_styles", mask=mask, region_styles={7: 0})
    assert "label 7 does not occur in the mask (its labels: 0, 1)" in missing
    check(engine, "region_styles", region_styles={0: 0})
    check(engine, "init_image", options=opts(init="image"))
    check(engine, "init_image", options=opts(init="image"), init_image=np.zeros((0, 3)))


@pytest.mark.parametrize(
    ("device", "text"),
    [
        ("tpu", "'tpu': impasto runs on cpu, cuda or cuda:N"),
        ("meta", "'meta': impasto runs on cpu, cuda or cuda:N"),
        ("cuda:1", "cuda:1: this machine has 1 CUDA devices"),
    ],
)
def test_devices_it_cannot_run_on(monkeypatch, device, text):
    """Refused where the engine is made, before the weights load or any tensor moves."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a one-GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(EngineError) as info:
        Engine(device=device)
    assert info.value.field == "device" and text in str(info.value)
