"""Results and previews as napari layers: placed over the content, described in metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from impasto.client import Result
from napari.layers import Image
from napari.utils.notifications import show_info

from napari_impasto import layers as layer_tools
from napari_impasto.worker import PlaneDone, RunControl

PREVIEW_LAYER = "impasto preview"


@dataclass
class ActiveRun:
    """What the GUI remembers about the run in progress."""

    control: RunControl
    content: Image
    rendering: layer_tools.Rendering
    style_names: list[str]
    mask_name: str | None
    region_styles: dict[int, int]
    stack: bool
    indices: list[tuple[int, ...]]
    style_weights: list[float]
    # The content's transform (layer_tools.frame_of), shape and look when the run began: its
    # data, transform, colormap and contrast limits may change during the run, and the results
    # overlay it as Run saw it.
    frame: layer_tools.Placement
    lead: tuple[int, ...] = ()  # the sizes of the axes in front of the plane
    plane_shape: tuple[int, int] = (0, 0)
    colormap: Any = None
    contrast_limits: tuple[float, float] = (0.0, 1.0)
    style_layers: list[Any] = field(default_factory=list)
    worker: Any = None
    address: str = ""
    result_layer: Image | None = None
    stack_data: np.ndarray | None = None  # a stack's result, slices filled in as they finish
    result_layers: int = 0
    previews: int = 0


def show_preview(viewer: Any, state: ActiveRun, plane: int, preview: np.ndarray) -> None:
    """Show a preview in the preview layer, placed like the result will be."""
    data = state.rendering.from_wire(preview)
    index = state.indices[plane]
    placement = layer_tools.placement_of(state.frame, index, data.shape[:2], state.plane_shape)
    data = data.reshape((1,) * len(index) + data.shape)
    kwargs = image_kwargs(state, data, placement)
    layer = _layer(viewer, PREVIEW_LAYER)
    if layer is not None and (
        layer.data.shape != data.shape
        or layer.data.dtype != data.dtype  # napari sets the contrast range from the dtype
        or layer.rgb != kwargs["rgb"]
    ):
        viewer.layers.remove(layer)
        layer = None
    if layer is None:
        layer = viewer.add_image(data, name=PREVIEW_LAYER, **kwargs)
    else:  # an earlier run's (or this run's) preview layer: drawn as this run's result will be
        layer.data = data
        for name, value in kwargs.items():
            if name != "rgb":
                setattr(layer, name, value)
        layer.visible = True
    state.previews += 1


def add_plane_result(viewer: Any, state: ActiveRun, item: PlaneDone) -> None:
    """Add a finished plane: a new layer, or (for a stack) the next plane of the run's layer."""
    result = item.result
    image = state.rendering.from_wire(result.image)
    metadata = metadata_of(state, result, item)
    if not state.stack:
        placement = layer_tools.placement_of(
            state.frame, item.index, image.shape[:2], state.plane_shape
        )
        data = image.reshape((1,) * len(item.index) + image.shape)
        _add_result_layer(viewer, state, data, placement, metadata)
    else:
        # The whole stack's result appears at the first slice, then fills in. The run keeps
        # the array, so a result layer deleted during the run comes back with every slice done.
        if state.stack_data is None:
            state.stack_data = np.zeros(state.lead + image.shape, dtype=image.dtype)
        state.stack_data[item.index] = image
        layer = state.result_layer
        if layer is None or layer not in viewer.layers:
            placement = layer_tools.placement_of(
                state.frame, None, image.shape[:2], state.plane_shape
            )
            added = _add_result_layer(viewer, state, state.stack_data, placement, metadata)
            if layer is not None:
                show_info(
                    f"impasto: the result layer {layer.name!r} was deleted during the run; it "
                    f"is back as {added.name!r} with the slices done so far, and fills in as "
                    "the run goes on"
                )
        else:
            layer.metadata["impasto"] = metadata
            layer.refresh()


def metadata_of(state: ActiveRun, result: Result, item: PlaneDone) -> dict[str, Any]:
    """Everything about the run, kept in ``layer.metadata["impasto"]``."""
    return {
        "content": state.content.name,
        "styles": list(state.style_names),
        "style_weights": list(state.style_weights),
        "mask": state.mask_name,
        "region_styles": dict(state.region_styles),
        "settings": dict(result.settings),
        "losses": dict(result.losses),
        "iterations": result.iterations,
        "elapsed_seconds": result.elapsed_seconds,
        "job_id": result.job_id,
        "server": state.address,
        "slice": list(item.index),
        "slices_done": item.plane + 1,
        "slices": item.planes,
    }


def _is_rgb(data: np.ndarray, state: ActiveRun) -> bool:
    return state.rendering.rgb or state.rendering.colormapped


def image_kwargs(
    state: ActiveRun, data: np.ndarray, placement: layer_tools.Placement
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "scale": placement.scale,
        "translate": placement.translate,
        "rotate": placement.rotate,
        "shear": placement.shear,
        "affine": placement.affine,
        "rgb": _is_rgb(data, state),
    }
    if placement.units is not None:
        kwargs["units"] = placement.units
    if not kwargs["rgb"]:
        kwargs["colormap"] = state.colormap
        kwargs["contrast_limits"] = state.contrast_limits
    elif state.rendering.rgb:
        kwargs["contrast_limits"] = state.contrast_limits
    else:  # grayscale through its colormap: uint8 RGB, as it was shown
        kwargs["contrast_limits"] = (0.0, 255.0)
    return kwargs


def _layer(viewer: Any, name: str) -> Image | None:
    if name in viewer.layers and isinstance(viewer.layers[name], Image):
        return viewer.layers[name]
    return None


def _add_result_layer(viewer: Any, state: ActiveRun, data: np.ndarray, placement: Any,
                      metadata: dict) -> Image:  # fmt: skip
    """A new result layer (a run never overwrites an earlier one's)."""
    state.result_layer = viewer.add_image(
        data,
        name=layer_tools.result_name(state.content.name, state.style_names),
        metadata={"impasto": metadata},
        **image_kwargs(state, data, placement),
    )
    state.result_layers += 1
    return state.result_layer
