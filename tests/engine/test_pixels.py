"""Images to the engine's pixels and back: every dtype and channel count napari holds, against
a plain statement of the mapping (RGB float32 planes in 0..255)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from impasto_server.engine import imaging

RNG = np.random.default_rng(7)


def reference(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(3, H, W) RGB and (H, W) alpha or None, float32 0..255, as the mapping says."""
    x = image.astype(np.float32)
    if image.dtype == np.uint16:
        x = x * np.float32(255.0 / 65535.0)
    elif image.dtype.kind == "f":
        low, high = float(image.min()), float(image.max())
        if low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0
        elif high == low:
            high = low + 1.0
        x = (x - np.float32(low)) * np.float32(255.0 / (high - low))
    planes = x.transpose(2, 0, 1)
    rgb = np.repeat(planes[:1], 3, axis=0) if image.shape[2] == 1 else planes[:3]
    return rgb, planes[3] if image.shape[2] == 4 else None


CASES = {
    **{f"uint8 {c}": RNG.integers(0, 256, (23, 31, c), dtype=np.uint8) for c in (1, 3, 4)},
    **{f"uint16 {c}": RNG.integers(0, 65536, (23, 31, c), dtype=np.uint16) for c in (1, 3, 4)},
    **{f"float32 {c}": RNG.random((23, 31, c), dtype=np.float32) for c in (1, 3, 4)},
    "float64 beyond 0..1": RNG.random((23, 31, 3)) * 7.0 - 2.0,
    "float32 flat": np.full((23, 31, 3), 0.25, dtype=np.float32),
    "uint8 strided": RNG.integers(0, 256, (23, 62, 4), dtype=np.uint8)[:, ::2],
}


@pytest.mark.parametrize("name", CASES)
def test_to_pixels(name):
    image = CASES[name]
    rgb, alpha, source = imaging.to_pixels(image)
    want_rgb, want_alpha = reference(image)
    assert rgb.dtype == torch.float32 and rgb.shape == (1, 3, 23, 31) and rgb.is_contiguous()
    np.testing.assert_allclose(rgb[0].numpy(), want_rgb, rtol=1e-6, atol=1e-4)
    assert (alpha is None) == (want_alpha is None)
    if alpha is not None:
        assert alpha.shape == (1, 1, 23, 31)
        np.testing.assert_allclose(alpha[0, 0].numpy(), want_alpha, rtol=1e-6, atol=1e-4)
    assert source.channels == image.shape[2] and source.dtype == image.dtype
    if image.dtype.kind == "u":  # integers come back exactly
        back = imaging.from_pixels(rgb, alpha, source)
        assert back.dtype == image.dtype
        np.testing.assert_array_equal(back, image[:, :, 0] if image.shape[2] == 1 else image)


def test_a_read_only_array_converts_without_a_warning():
    image = np.frombuffer(CASES["uint8 3"].tobytes(), dtype=np.uint8).reshape(23, 31, 3)
    assert not image.flags.writeable  # as a request's bytes arrive
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb, _, _ = imaging.to_pixels(image)
    rgb += 1.0  # the engine's own copy
    np.testing.assert_array_equal(image, CASES["uint8 3"])


def test_float_pixels_spanning_float32s_whole_range_map_without_overflow():
    """Finite float32 pixels, rescaled by their own min and max as the API promises: the
    difference of -3e38 and 3e38 is beyond float32 (it went to inf, the job then 'diverged')."""
    image = np.full((4, 5, 3), 0.0, dtype=np.float32)
    image[0, 0], image[0, 1] = -3e38, 3e38
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way in or back
        rgb, alpha, source = imaging.to_pixels(image)
        back = imaging.from_pixels(rgb, alpha, source)
    assert torch.isfinite(rgb).all()
    np.testing.assert_allclose(rgb[0, :, 0, :2].numpy(), [[0.0, 255.0]] * 3, atol=1e-3)
    np.testing.assert_allclose(rgb[0, :, 1:, :].numpy(), 127.5, atol=1e-3)
    assert np.isfinite(back).all() and back.dtype == np.float32
    np.testing.assert_allclose(back[0, :2, 0], [-3e38, 3e38], rtol=1e-6)


@pytest.mark.parametrize("value", [3e38, -3e38, 2.0**60, 7.0])
def test_a_constant_float_picture_of_any_finite_value_converts_and_comes_back(value):
    """A constant picture has no range of its own to rescale by: it is given one. From 2**53
    on, value + 1 is the value itself (float64), so the span was 0 and the job failed."""
    image = np.full((4, 5, 3), value, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb, alpha, source = imaging.to_pixels(image)
        back = imaging.from_pixels(rgb, alpha, source)
    assert torch.isfinite(rgb).all() and float(rgb.max()) <= 255.0
    np.testing.assert_allclose(back, image, rtol=1e-6)
