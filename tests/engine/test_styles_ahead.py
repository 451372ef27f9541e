"""Styles resized when a job is prepared (on a server, ahead, while the device runs others),
not where each stage begins; only where the Gram cache lacks them; the same pixels either way."""

from __future__ import annotations

import numpy as np
from impasto_server.engine import Engine, StyleOptions
from impasto_server.engine import transfer as transfer_module
from impasto_server.engine.cache import GramCache

OPTIONS = StyleOptions.from_preset("default", size=48, num_scales=3, iterations=6, seed=1)


def _run(engine: Engine, run) -> np.ndarray:
    events = list(engine.run_batch([run]))
    for _, event in events:
        assert not isinstance(event, BaseException), event
    return events[-1][1].image


def test_a_new_style_is_resized_when_the_job_is_prepared(monkeypatch, content, style):
    engine = Engine(device="cpu")
    run = engine.prepare(content, [style], OPTIONS)
    sizes = {size for index, size in run.styles_px}
    assert len(sizes) == len(run.shapes) == 3 and {index for index, _ in run.styles_px} == {0}
    resized = []
    real = transfer_module.imaging.resize

    def resize(x, size):
        resized.append(tuple(x.shape[-2:]))
        return real(x, size)

    monkeypatch.setattr(transfer_module.imaging, "resize", resize)
    image = _run(engine, run)
    assert style.shape[:2] not in resized  # no stage resized the style itself
    assert run.styles_px == {}  # each taken as its stage began

    # Its Grams are cached now: the same job again has nothing to resize ahead.
    again = engine.prepare(content, [style], OPTIONS)
    assert again.styles_px == {}
    monkeypatch.setattr(transfer_module.imaging, "resize", real)

    # The same pixels as where a stage resizes the style itself: the same image, to the bit.
    fresh = Engine(device="cpu")
    late = fresh.prepare(content, [style], OPTIONS)
    late.styles_px.clear()
    assert np.array_equal(_run(fresh, late), image)


def test_a_cached_style_is_never_converted_and_full_sizes_are_not_held(monkeypatch, content, style):
    engine = Engine(device="cpu")
    image = _run(engine, engine.prepare(content, [style], OPTIONS))  # its Grams cached now
    converted = []
    real = transfer_module.imaging.to_pixels

    def to_pixels(array):
        converted.append(array.shape)
        return real(array)

    monkeypatch.setattr(transfer_module.imaging, "to_pixels", to_pixels)
    run = engine.prepare(content, [style], OPTIONS)
    assert converted == [content.shape]  # the content's pixels, not the style's
    assert run.inputs._style_px == {}
    assert run.inputs.content is None  # its stages are made; luminance transfer alone keeps it
    luminance = engine.prepare(content, [style], OPTIONS.replace(color_preservation="luminance"))
    assert (
        luminance.inputs.content is not None
        and luminance.inputs.content.shape[-2:] == (content.shape[:2])
    )
    converted.clear()
    converted.append(content.shape)
    assert np.array_equal(_run(engine, run), image)
    assert converted == [content.shape]

    # A new style is converted once, to be resized ahead, and its full size is not kept.
    other = np.ascontiguousarray(style[::-1])
    run = engine.prepare(content, [other], OPTIONS)
    assert converted == [content.shape] * 2 + [other.shape]
    assert run.inputs._style_px == {}

    # The cache may let a style's Grams go before its stage begins: converted then.
    run = engine.prepare(content, [style], OPTIONS)
    assert run.styles_px == {}
    engine._cache = GramCache(engine._cache.max_bytes)
    assert np.array_equal(_run(engine, run), image)
    assert converted[-1] == style.shape
