"""Layer <-> picture conversion: contrast limits, dtypes, colormaps, planes and placement."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from impasto import images
from napari.layers import Image, Labels
from napari_helpers import add_content_and_style
from napari_impasto import layers as lt
from napari_impasto.widget import BLEND


def test_contrast_limits_map_to_the_wire_range_and_back() -> None:
    data = np.linspace(-2.0, 6.0, 64, dtype=np.float64).reshape(8, 8)
    layer = Image(data, contrast_limits=(0.0, 4.0))
    rendering = lt.rendering_of(layer, colormap=False)
    assert rendering.wire_dtype == np.float32
    picture = lt.picture_of(layer, (), rendering)
    assert picture.dtype == np.float32 and picture.min() == 0.0 and picture.max() == 1.0
    back = rendering.from_wire(picture)
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, np.clip(data, 0.0, 4.0), atol=1e-5)


@pytest.mark.parametrize("colormap", [False, True])
def test_nan_pixels_go_as_napari_draws_them(colormap: bool) -> None:
    """A float layer with missing pixels (NaN; the server refuses non-finite pixels) sends them
    as the contrast range's low end, the colormap's low colour napari draws them in."""
    data = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    data[:2] = np.nan
    data[7, 7], data[7, 6] = np.inf, -np.inf
    layer = Image(data, contrast_limits=(0.0, 1.0), colormap="viridis")
    rendering = lt.rendering_of(layer, colormap=colormap)
    picture = lt.picture_of(layer, (), rendering)
    assert np.isfinite(picture).all()
    low = lt.picture_of(Image(np.zeros((8, 8), np.float32), colormap="viridis",
                              contrast_limits=(0.0, 1.0)), (), rendering)  # fmt: skip
    np.testing.assert_array_equal(picture[:2], low[:2])
    np.testing.assert_array_equal(picture[7, 6], low[7, 6])
    assert picture[7, 7].max() > picture[7, 6].max()  # +inf is the top of the range
    np.testing.assert_array_equal(images.from_wire(images.to_wire(picture)), picture)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_layers_travel_losslessly_in_their_own_dtype(dtype: type) -> None:
    top = np.iinfo(dtype).max
    data = np.arange(0, 100, dtype=dtype).reshape(10, 10) * (top // 100)
    layer = Image(data, contrast_limits=(0, top))
    rendering = lt.rendering_of(layer, colormap=False)
    picture = lt.picture_of(layer, (), rendering)
    assert picture.dtype == dtype
    np.testing.assert_array_equal(picture, data)
    np.testing.assert_array_equal(rendering.from_wire(picture), data)


def test_signed_integers_go_as_float_and_come_back_as_their_dtype() -> None:
    data = np.arange(-50, 50, dtype=np.int16).reshape(10, 10)
    layer = Image(data, contrast_limits=(-50, 49))
    rendering = lt.rendering_of(layer, colormap=False)
    picture = lt.picture_of(layer, (), rendering)
    assert picture.dtype == np.float32
    back = rendering.from_wire(picture)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, data)


def test_grayscale_through_its_colormap_becomes_rgb() -> None:
    layer = Image(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), colormap="viridis")
    rendering = lt.rendering_of(layer, colormap=True)
    picture = lt.picture_of(layer, (), rendering)
    assert picture.shape == (4, 4, 3) and picture.dtype == np.uint8
    assert rendering.from_wire(picture).shape == (4, 4, 3)
    # Gray stays gray even with the option on: there is no colour to keep.
    gray = Image(np.zeros((4, 4), np.float32), colormap="gray")
    assert not lt.rendering_of(gray, colormap=True).colormapped


def test_rgb_stack_planes_and_current_index() -> None:
    stack = np.zeros((3, 5, 6, 4), dtype=np.uint8)
    stack[1] = 200
    layer = Image(stack, rgb=True, scale=(2.0, 1.0, 1.0), translate=(4.0, 0.0, 0.0))
    assert lt.leading_shape(layer) == (3,)
    assert lt.plane_shape(layer) == (5, 6)
    assert lt.current_index(layer, (6.0, 0.0, 0.0)) == (1,)  # world z 6 -> data z 1
    assert lt.current_index(layer, (99.0, 0.0, 0.0)) == (2,)  # clipped to the stack
    assert list(lt.all_indices(layer)) == [(0,), (1,), (2,)]
    rendering = lt.rendering_of(layer, colormap=False)
    assert lt.picture_of(layer, (1,), rendering).shape == (5, 6, 4)


def test_placement_overlays_a_resized_result_exactly() -> None:
    layer = Image(np.zeros((2, 40, 80), np.float32), scale=(3.0, 0.5, 0.5), translate=(1, 2, 3))
    frame = lt.frame_of(layer)
    placement = lt.placement_of(frame, (1,), (20, 40), (40, 80))  # half the resolution, plane 1
    assert placement.scale == pytest.approx((3.0, 1.0, 1.0))
    # plane 1 sits one z step further; the first coarse pixel's edge meets the content's
    assert placement.translate[0] == pytest.approx(1 + 3.0)
    assert placement.translate[1] - placement.scale[1] / 2 == pytest.approx(2 - 0.25)
    assert placement.translate[2] - placement.scale[2] / 2 == pytest.approx(3 - 0.25)


def test_mask_plane_must_match_the_content() -> None:
    labels = Labels(np.ones((2, 10, 12), dtype=np.int32))
    data = lt.base_data(labels)
    assert lt.label_plane(data, labels.name, (1,), (10, 12)).dtype == np.uint16
    with pytest.raises(lt.LayerError, match="must match"):
        lt.label_plane(data, labels.name, (0,), (10, 10))


def _items(combo: Any) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def test_renaming_a_layer_renames_it_in_every_choice(
    dock: Any, tiny_content: np.ndarray, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock()
    add_content_and_style(viewer, tiny_content, tiny_style)
    viewer.add_labels(np.ones(tiny_content.shape[:2], dtype=np.int32), name="regions")
    widget.content.setCurrentText("content")
    widget.style_rows[0].layer.setCurrentText("style")
    widget.init_layer.setCurrentText("style")
    widget.mask.setCurrentText("regions")

    viewer.layers["content"].name = "photo"
    viewer.layers["style"].name = "brush"
    viewer.layers["regions"].name = "areas"
    assert _items(widget.content) == ["photo", "brush"]
    # Each choice follows its layer to the new name.
    assert widget.content.currentText() == "photo"
    assert widget.style_rows[0].layer.currentText() == "brush"
    assert widget.init_layer.currentText() == "brush"
    assert _items(widget.mask) == ["(none)", "areas"] and widget.mask.currentText() == "areas"
    _, state = widget._plan()  # Run would take the renamed layers
    assert state.content.name == "photo" and state.style_names == ["brush"]
    assert state.mask_name == "areas"

    # A layer that left the viewer is no longer followed; one that came in is.
    removed = viewer.layers.pop(viewer.layers.index("brush"))
    removed.name = "elsewhere"
    viewer.add_image(tiny_style, name="late", rgb=True).name = "later"
    assert _items(widget.content) == ["photo", "later"]


def test_removing_a_style_keeps_each_regions_style(dock: Any) -> None:
    viewer, widget = dock()
    picture = np.zeros((16, 16, 3), np.uint8)
    for name in ("content", "A", "B", "C"):
        viewer.add_image(picture, name=name, rgb=True)
    labels = np.zeros((16, 16), np.uint8)
    labels[:, :8], labels[:, 8:], labels[0, 0] = 1, 2, 3
    viewer.add_labels(labels, name="cells")
    widget.content.setCurrentText("content")
    widget.style_rows[0].layer.setCurrentText("A")
    widget.add_style_row("B")
    widget.add_style_row("C")
    widget.mask.setCurrentText("cells")

    def table() -> dict[int, str]:
        cell, rows = widget.regions.cellWidget, range(widget.regions.rowCount())
        return {int(cell(row, 0).text()): cell(row, 1).currentText() for row in rows}

    for row, style in enumerate((1, 2, -1)):  # 1 -> B, 2 -> C, 3 -> the blend of all
        choice = widget.regions.cellWidget(row, 1)
        choice.setCurrentIndex(choice.findData(style))
    assert widget.region_styles() == {1: 1, 2: 2}
    widget.style_rows[0].remove.click()  # A goes: B and C move up
    assert table() == {1: "1: B", 2: "2: C", 3: BLEND}
    assert widget.region_styles() == {1: 0, 2: 1}
    widget.style_rows[0].remove.click()  # B goes: its region takes the blend
    assert table() == {1: BLEND, 2: "1: C", 3: BLEND}
    viewer.add_points([[1, 1]])  # the table is made again: the choices stay
    assert table() == {1: BLEND, 2: "1: C", 3: BLEND}
    assert widget.region_styles() == {2: 0}
