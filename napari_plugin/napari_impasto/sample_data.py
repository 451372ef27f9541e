"""Sample data: a content photograph and a style image, ready to stylize in one click."""

from __future__ import annotations

from typing import Any

from impasto import samples

LayerData = tuple[Any, dict[str, Any], str]


def content() -> list[LayerData]:
    """The astronaut photograph bundled with scikit-image."""
    return [(samples.content("astronaut"), {"name": "astronaut", "rgb": True}, "image")]


def style() -> list[LayerData]:
    """A painterly image of swirling brush strokes, drawn by code (no download)."""
    return [(samples.style(), {"name": "brush strokes", "rgb": True}, "image")]


def content_and_style() -> list[LayerData]:
    """Both; the style is hidden so the content stays in view."""
    (image, meta, kind), (strokes, style_meta, style_kind) = content()[0], style()[0]
    return [(image, meta, kind), (strokes, {**style_meta, "visible": False}, style_kind)]
