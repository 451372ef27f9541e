"""napari layers <-> the 2D pictures the server takes, and back (numpy only, no Qt).

The server stylizes one 2D picture (HxW, HxWx3 or HxWx4; uint8, uint16 or float32). A napari
layer may be an nD stack of any numeric dtype shown through contrast limits and a colormap, so a
layer becomes a picture in three steps: pick the 2D plane (the current slice, or each slice of the
stack), map the contrast limits to the full range of the wire dtype (so the server stylizes what
the user sees), and optionally apply the colormap to grayscale. The result goes back the same way:
its values are mapped into the content's contrast limits and dtype, and it is placed with the
content's scale and translate so it overlays exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Full range of each dtype the server preserves; anything else travels as float32 in 0..1.
_WIRE_RANGES: dict[np.dtype, float] = {
    np.dtype(np.uint8): 255.0,
    np.dtype(np.uint16): 65535.0,
    np.dtype(np.float32): 1.0,
}


class LayerError(ValueError):
    """A layer that cannot be stylized; the message is meant for the user."""


@dataclass(frozen=True)
class Rendering:
    """How a layer's values were turned into the picture sent, so the result can go back."""

    rgb: bool  # the layer is RGB(A): the last axis holds channels
    colormapped: bool  # grayscale sent through its colormap as RGB (the result stays RGB)
    dtype: np.dtype  # the layer's dtype
    wire_dtype: np.dtype  # the dtype sent to the server
    low: float  # contrast limits mapped to the wire range
    high: float

    def to_wire(self, plane: np.ndarray, colormap: Any = None) -> np.ndarray:
        """One plane of the layer as the picture to send."""
        values = np.asarray(plane)
        if self.rgb and values.shape[-1] not in (3, 4):
            raise LayerError(f"an RGB layer needs 3 or 4 channels, not {values.shape[-1]}")
        scaled = _normalise(values, self.low, self.high)  # float32 in 0..1
        if self.colormapped:
            rgba = np.asarray(colormap.map(scaled.reshape(-1)), dtype=np.float32)
            scaled = rgba[:, :3].reshape(*scaled.shape, 3)
        return _from_unit(scaled, self.wire_dtype)

    def from_wire(self, picture: np.ndarray) -> np.ndarray:
        """A stylized picture from the server in the layer's own value range and dtype."""
        unit = _to_unit(picture)
        if self.colormapped:
            return _from_unit(unit, np.dtype(np.uint8))
        values = self.low + unit * (self.high - self.low)
        return _cast(values, self.dtype)


def _normalise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values in 0..1 of the contrast limits. NaN (a float layer's masked or missing pixels,
    which napari draws in the colormap's low colour) becomes 0, as it is shown."""
    span = high - low if high > low else 1.0
    scaled = (values.astype(np.float32) - np.float32(low)) / np.float32(span)
    return np.clip(np.nan_to_num(scaled, copy=False, nan=0.0), 0.0, 1.0)


def _to_unit(picture: np.ndarray) -> np.ndarray:
    full = _WIRE_RANGES.get(np.dtype(picture.dtype), 1.0)
    return np.clip(picture.astype(np.float32) / np.float32(full), 0.0, 1.0)


def _from_unit(unit: np.ndarray, dtype: np.dtype) -> np.ndarray:
    full = _WIRE_RANGES[np.dtype(dtype)]
    if dtype == np.float32:
        return np.ascontiguousarray(unit, dtype=np.float32)
    return np.round(unit * full).astype(dtype)


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)
    if dtype.kind == "b":
        return values >= 0.5
    if dtype.kind == "f":
        return values.astype(dtype)
    return values.astype(np.float32)


def wire_dtype_for(dtype: np.dtype) -> np.dtype:
    """uint8 and uint16 travel as they are (lossless); every other dtype as float32 in 0..1."""
    return np.dtype(dtype) if np.dtype(dtype) in _WIRE_RANGES else np.dtype(np.float32)


def is_gray_colormap(colormap: Any) -> bool:
    name = getattr(colormap, "name", str(colormap))
    return name in ("gray", "grey")


def base_data(layer: Any) -> Any:
    """The layer's array (a multiscale layer's first level, which holds the full
    resolution), as it is now: napari replaces ``layer.data`` on assignment, so a reference to
    it keeps reading what the layer held when it was taken."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def leading_shape(layer: Any) -> tuple[int, ...]:
    """The sizes of the axes in front of the 2D plane (empty for a 2D layer)."""
    shape = tuple(int(s) for s in base_data(layer).shape)
    if getattr(layer, "rgb", False):
        shape = shape[:-1]
    return shape[:-2]


def plane_shape(layer: Any) -> tuple[int, int]:
    shape = tuple(int(s) for s in base_data(layer).shape)
    if getattr(layer, "rgb", False):
        shape = shape[:-1]
    return shape[-2], shape[-1]


def current_index(layer: Any, world_point: Any) -> tuple[int, ...]:
    """The index of the plane napari shows now, along the layer's leading axes."""
    lead = leading_shape(layer)
    if not lead:
        return ()
    data_point = np.asarray(layer.world_to_data(np.asarray(world_point, dtype=float)))
    index = []
    for axis, size in enumerate(lead):
        value = data_point[axis] if axis < len(data_point) else 0.0
        index.append(int(np.clip(np.round(value), 0, size - 1)))
    return tuple(index)


def all_indices(layer: Any) -> Iterator[tuple[int, ...]]:
    """Every plane of the stack in order (C order over the leading axes)."""
    return itertools.product(*(range(s) for s in leading_shape(layer)))


def plane(layer: Any, index: tuple[int, ...]) -> np.ndarray:
    """One 2D plane (HxW, or HxWxC for RGB) as a numpy array; reads only that plane."""
    return np.asarray(base_data(layer)[tuple(index)])


def rendering_of(layer: Any, *, colormap: bool) -> Rendering:
    """How to send ``layer``: its contrast limits and, for grayscale, optionally its colormap."""
    data = base_data(layer)
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        raise LayerError(f"layer {layer.name!r} has dtype {dtype}; it needs numbers")
    rgb = bool(getattr(layer, "rgb", False))
    low, high = (float(v) for v in layer.contrast_limits)
    colormapped = bool(colormap) and not rgb and not is_gray_colormap(layer.colormap)
    wire = np.dtype(np.uint8) if colormapped else wire_dtype_for(dtype)
    return Rendering(rgb, colormapped, dtype, wire, low, high)


def picture_of(layer: Any, index: tuple[int, ...], rendering: Rendering) -> np.ndarray:
    """The picture to send for one plane of ``layer``."""
    return picture_from(base_data(layer), index, rendering, getattr(layer, "colormap", None))


def picture_from(
    data: Any, index: tuple[int, ...], rendering: Rendering, colormap: Any = None
) -> np.ndarray:
    """The picture to send for one plane of ``data`` (a layer's ``base_data``)."""
    return rendering.to_wire(np.asarray(data[tuple(index)]), colormap)


def label_plane(
    data: Any, name: str, index: tuple[int, ...], shape: tuple[int, int],
    shown: tuple[int, ...] = (),
) -> np.ndarray:  # fmt: skip
    """The labels under one content plane, from ``data`` (``base_data`` of the Labels layer
    called ``name``): the same leading index when the labels are a stack like the content,
    otherwise the labels' plane ``shown`` (its ``current_index`` when Run was pressed)."""
    lead = tuple(int(s) for s in data.shape[:-2])
    if lead and len(lead) == len(index) and all(i < s for i, s in zip(index, lead)):
        array = np.asarray(data[tuple(index)])
    elif lead:
        array = np.asarray(data[tuple(shown) if len(shown) == len(lead) else (0,) * len(lead)])
    else:
        array = np.asarray(data)
    if array.shape != shape:
        raise LayerError(
            f"the mask {name!r} is {array.shape[0]}x{array.shape[1]} but the content "
            f"is {shape[0]}x{shape[1]}; a mask must match the content's plane"
        )
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise LayerError(f"the mask {name!r} has labels outside 0..65535")
    return array.astype(np.uint16)


@dataclass(frozen=True)
class Placement:
    """Where a result goes in world coordinates: the content's transform, adjusted for the
    result's own pixel size (the server resizes to the requested size)."""

    scale: tuple[float, ...]
    translate: tuple[float, ...]
    rotate: Any
    shear: Any
    affine: Any
    units: Any


def frame_of(layer: Any) -> Placement:
    """The layer's own transform as it is now, copied: a result placed from it overlays the
    layer as it was then, whatever the layer's transform or data become meanwhile."""
    return Placement(
        tuple(float(s) for s in layer.scale),
        tuple(float(t) for t in layer.translate),
        np.array(layer.rotate, dtype=float),
        np.array(layer.shear, dtype=float),
        np.array(layer.affine.affine_matrix, dtype=float),
        getattr(layer, "units", None),
    )


def placement_of(
    frame: Placement,
    index: tuple[int, ...] | None,
    result_shape: tuple[int, int],
    source_shape: tuple[int, int],
) -> Placement:
    """The transform for a result of ``result_shape`` made from the plane at ``index`` (None:
    the whole stack, one result plane per content plane) of a layer whose transform was
    ``frame`` (``frame_of``) and whose planes were ``source_shape`` when it was sent."""
    scale = list(frame.scale)
    translate = list(frame.translate)
    height, width = source_shape
    for axis, (source, target) in zip((-2, -1), zip((height, width), result_shape)):
        factor = source / target
        # Pixel centres sit at integer coordinates, so a coarser pixel's centre moves by half
        # of the extra width.
        translate[axis] += scale[axis] * (factor - 1.0) / 2.0
        scale[axis] *= factor
    if index is not None:
        for axis, position in enumerate(index):
            translate[axis] += scale[axis] * position
    return Placement(
        tuple(scale), tuple(translate), frame.rotate, frame.shear, frame.affine, frame.units
    )


def result_name(content: str, styles: list[str]) -> str:
    return f"{content} in the style of {' + '.join(styles)}"
