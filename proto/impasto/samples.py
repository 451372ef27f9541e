"""Sample images that need no download: a photograph bundled with scikit-image, and a
painterly style image drawn by code (swirling brush strokes in a night-sky palette)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_PALETTE = np.array(
    [
        (16, 32, 84),  # deep blue
        (28, 60, 130),
        (52, 98, 170),
        (96, 140, 196),  # sky blue
        (220, 196, 82),  # straw yellow
        (238, 220, 130),
        (30, 54, 40),  # dark green
        (200, 120, 40),  # ochre
    ],
    dtype=np.float64,
)


def content(name: str = "astronaut") -> np.ndarray:
    """A photograph bundled with scikit-image (RGB uint8): astronaut, chelsea or coffee."""
    try:
        from skimage import data
    except ImportError as exc:  # the base client install has no scikit-image
        raise RuntimeError(
            "sample photographs need scikit-image: pip install scikit-image"
        ) from exc
    loaders = {"astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee}
    if name not in loaders:
        raise ValueError(f"unknown sample {name!r}; choose one of {sorted(loaders)}")
    return np.ascontiguousarray(loaders[name]())


def style(size: int = 384, seed: int = 1889) -> np.ndarray:
    """A painterly style image (RGB uint8, size x size) of short curved brush strokes that
    follow a swirling flow field, with a few bright 'stars'. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    canvas = Image.new("RGB", (size, size), (24, 44, 100))
    draw = ImageDraw.Draw(canvas)
    centres = rng.uniform(0, size, size=(5, 2))
    spins = rng.choice([-1.0, 1.0], size=5) * rng.uniform(0.6, 1.4, size=5)

    def flow(x: float, y: float) -> float:
        angle = 0.35 * math.sin(y / size * 6.0)
        for (cx, cy), spin in zip(centres, spins):
            dx, dy = x - cx, y - cy
            r2 = dx * dx + dy * dy + 1.0
            weight = math.exp(-r2 / (2 * (size * 0.18) ** 2))
            angle += weight * spin * (math.atan2(dy, dx) + math.pi / 2)
        return angle

    stroke = max(2, size // 96)
    for _ in range(int(size * size / 14)):
        x, y = rng.uniform(0, size, size=2)
        band = y / size  # bluer at the top, warmer and darker at the bottom
        weights = np.array([1.2, 1.6, 1.6, 1.2, 0.5 + band, 0.4, 2.5 * band**3, 0.6 * band])
        colour = _PALETTE[rng.choice(len(_PALETTE), p=weights / weights.sum())]
        colour = np.clip(colour + rng.normal(0, 14, size=3), 0, 255).astype(int)
        points = [(x, y)]
        for _ in range(int(rng.integers(3, 7))):
            a = flow(x, y)
            x, y = x + 3.0 * math.cos(a), y + 3.0 * math.sin(a)
            points.append((x, y))
        draw.line(points, fill=tuple(colour), width=stroke)
    for cx, cy in centres[:3]:  # halos of light around the swirls' centres
        for radius, shade in ((size * 0.05, (236, 214, 120)), (size * 0.025, (252, 246, 200))):
            draw.ellipse(
                (cx - radius, cy - radius, cx + radius, cy + radius), outline=shade, width=stroke
            )
    canvas = canvas.filter(ImageFilter.SMOOTH)
    return np.asarray(canvas, dtype=np.uint8).copy()
