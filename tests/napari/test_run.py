"""Runs against a real server on 127.0.0.1: results, previews, dtypes, stacks, cancel."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from impasto.client import Client, Started
from napari_helpers import add_content_and_style, wait_for_run
from napari_impasto import widget as widget_module
from napari_impasto.worker import plan_regions


def _result_layers(viewer: Any) -> list[Any]:
    return [layer for layer in viewer.layers if "impasto" in layer.metadata]


def _stack_with_style(
    viewer: Any, widget: Any, stack: np.ndarray, style: np.ndarray, **content: Any
) -> Any:
    """``stack`` as the content layer (napari's ``content`` keywords), ``style`` as the style,
    both chosen, the whole stack to run; returns the content layer."""
    layer = viewer.add_image(stack, name="content", **content)
    viewer.add_image(style, name="style", rgb=True)
    widget.content.setCurrentText("content")
    widget.style_rows[0].layer.setCurrentText("style")
    widget.stack_mode.setCurrentIndex(widget.stack_mode.findData("stack"))
    return layer


def _ramps() -> np.ndarray:
    """Three 24 x 24 float slices, each a ramp of its own."""
    _, x = np.mgrid[:24, :24]
    return np.stack([(x * 0.04 + z * 0.2) % 1.0 for z in range(3)]).astype(np.float32)


def test_run_adds_a_result_layer_that_overlays_the_content(
    napari_server: Any, dock: Any, qtbot: Any, tiny_content: np.ndarray, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock(napari_server)
    add_content_and_style(viewer, tiny_content, tiny_style)
    content = viewer.layers["content"]
    content.scale = (0.5, 0.25)
    content.translate = (10.0, -3.0)
    widget.content.setCurrentText("content")
    widget.style_rows[0].layer.setCurrentText("style")

    widget.run()
    # Controls that must not change mid-run are locked until it ends.
    assert not widget.options_box.isEnabled() and not widget.run_button.isEnabled()
    assert widget.cancel_button.isEnabled()
    outcome = wait_for_run(qtbot, widget)
    assert outcome.status == "done", outcome.message
    assert widget.options_box.isEnabled() and widget.run_button.isEnabled()

    (result,) = _result_layers(viewer)
    assert result.name == "content in the style of style"
    # size 32 is the long side: 40x48 becomes 27x32 (the server keeps the aspect ratio)
    height, width = result.data.shape[:2]
    assert width == 32 and abs(height - 40 * 32 / 48) <= 1
    assert result.rgb and result.data.dtype == np.uint8 and result.data.shape[2] == 3
    # Same world extent as the content: a coarser pixel, shifted by half its extra width.
    for axis, source in enumerate((40, 48)):
        factor = source / result.data.shape[axis]
        assert result.scale[axis] == pytest.approx(content.scale[axis] * factor)
        world_start = result.translate[axis] - result.scale[axis] / 2
        content_start = content.translate[axis] - content.scale[axis] / 2
        assert world_start == pytest.approx(content_start)
    meta = result.metadata["impasto"]
    assert meta["content"] == "content" and meta["styles"] == ["style"]
    assert meta["settings"]["size"] == 32 and meta["settings"]["iterations"] == 4
    assert meta["settings"]["seed"] == 7
    assert meta["losses"]["total"] > 0
    assert not np.array_equal(result.data, np.zeros_like(result.data))

    # Running again adds a second layer; nothing is overwritten.
    first = result.data.copy()
    widget.set_options(iterations=2)
    widget.run()
    assert wait_for_run(qtbot, widget).status == "done"
    layers = _result_layers(viewer)
    assert len(layers) == 2
    np.testing.assert_array_equal(layers[0].data, first)
    assert layers[1].metadata["impasto"]["settings"]["iterations"] == 2


def test_previews_update_the_preview_layer(
    napari_server: Any, dock: Any, qtbot: Any, tiny_content: np.ndarray, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock(napari_server, iterations=6)
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.preview_interval.setValue(2)
    shown: list[np.ndarray] = []

    def watch(event: Any) -> None:
        if event.value is not None and "impasto preview" in viewer.layers:
            shown.append(np.asarray(viewer.layers["impasto preview"].data).copy())

    viewer.layers.events.inserted.connect(watch)
    widget.run()
    assert wait_for_run(qtbot, widget).status == "done"
    preview = viewer.layers["impasto preview"]
    assert widget_previews(widget) >= 2  # every 2nd of 6 iterations
    assert preview.data.shape[-3:] == _result_layers(viewer)[0].data.shape
    assert shown, "the preview layer appeared during the run"
    assert not preview.visible  # hidden once the result is there


def widget_previews(widget: Any) -> int:
    return widget.previews_shown


def test_grayscale_uint16_keeps_dtype_and_contrast_limits(
    napari_server: Any, dock: Any, qtbot: Any, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock(napari_server)
    y, x = np.mgrid[:32, :32]
    gray = (1000 + 40 * x + 20 * y).astype(np.uint16)  # a narrow band of the 16-bit range
    layer = viewer.add_image(gray, name="content", colormap="magma")
    layer.contrast_limits = (1000, 3000)
    viewer.add_image(tiny_style, name="style", rgb=True)
    widget.content.setCurrentText("content")
    widget.style_rows[0].layer.setCurrentText("style")
    widget.run()
    assert wait_for_run(qtbot, widget).status == "done", widget.last_outcome
    (result,) = _result_layers(viewer)
    assert result.data.dtype == np.uint16 and result.data.shape == (32, 32)
    assert not result.rgb
    assert tuple(result.contrast_limits) == (1000, 3000)
    assert result.colormap.name == "magma"
    # What the user saw (1000..3000) is what was stylized, mapped back into that band.
    assert 1000 <= result.data.min() and result.data.max() <= 3000
    assert result.data.std() > 10

    # Through the colormap instead: the result is colour.
    widget.apply_colormap.setChecked(True)
    widget.run()
    assert wait_for_run(qtbot, widget).status == "done"
    coloured = _result_layers(viewer)[1]
    assert coloured.rgb and coloured.data.shape == (32, 32, 3)


def test_stack_is_stylized_slice_by_slice(
    napari_server: Any, dock: Any, qtbot: Any, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock(napari_server, iterations=2)
    _, x = np.mgrid[:24, :24]
    stack = np.stack([(x * 0.04 + z * 0.2) % 1.0 for z in range(3)]).astype(np.float32)
    content = viewer.add_image(stack, name="content", scale=(2.0, 1.0, 1.0))
    viewer.add_image(tiny_style, name="style", rgb=True)
    widget.content.setCurrentText("content")
    widget.style_rows[0].layer.setCurrentText("style")
    widget.set_options(size=24)

    # The current slice only: a one-slice layer placed at that slice.
    viewer.dims.set_current_step(0, 2)
    widget.stack_mode.setCurrentIndex(widget.stack_mode.findData("slice"))
    widget.run()
    assert wait_for_run(qtbot, widget).status == "done", widget.last_outcome
    (single,) = _result_layers(viewer)
    assert single.data.shape == (1, 24, 24) and single.data.dtype == np.float32
    assert single.translate[0] == pytest.approx(content.translate[0] + 2 * 2.0)
    assert single.metadata["impasto"]["slice"] == [2]

    # The whole stack, in order, each slice started from the previous result.
    widget.stack_mode.setCurrentIndex(widget.stack_mode.findData("stack"))
    widget.run()
    assert wait_for_run(qtbot, widget).status == "done", widget.last_outcome
    whole = _result_layers(viewer)[1]
    assert whole.data.shape == (3, 24, 24)
    assert tuple(whole.scale) == pytest.approx((2.0, 1.0, 1.0))
    assert all(whole.data[z].std() > 0 for z in range(3))
    assert whole.metadata["impasto"]["slices_done"] == 3
    assert widget.progress.value() == widget.progress.maximum()


def test_cancel_stops_the_job_on_the_server(
    napari_server: Any, dock: Any, qtbot: Any, tiny_content: np.ndarray, tiny_style: np.ndarray
) -> None:
    server = napari_server  # runs one job at a time
    viewer, widget = dock(server, iterations=100_000, size=32)
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()
    qtbot.waitUntil(lambda: "iteration" in widget.status.text(), timeout=60_000)
    widget.cancel()
    outcome = wait_for_run(qtbot, widget, timeout=30)
    assert outcome.status == "cancelled"
    assert _result_layers(viewer) == []
    with Client(server.address) as client:
        # The slot is free again: nothing runs, and a new job starts at once.
        qtbot.waitUntil(lambda: client.server_info().running_jobs == 0, timeout=10_000)
        job = client.stylize(tiny_content, [tiny_style], size=32, iterations=1, num_scales=1)
        assert job.result().iterations == 1


def test_labels_mask_gives_regions_their_own_style(
    napari_server: Any, dock: Any, qtbot: Any, tiny_content: np.ndarray, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock(napari_server, iterations=3)
    add_content_and_style(viewer, tiny_content, tiny_style)
    viewer.add_image(255 - tiny_style, name="style 2", rgb=True)
    labels = np.zeros(tiny_content.shape[:2], dtype=np.int32)
    labels[:, :24] = 1
    labels[:, 24:] = 2
    viewer.add_labels(labels, name="regions")
    widget.content.setCurrentText("content")
    widget.style_rows[0].layer.setCurrentText("style")
    widget.add_style_row("style 2", weight=1.0)
    widget.mask.setCurrentText("regions")
    # Each label proposes a style of its own: label 1 -> style 1, label 2 -> style 2.
    assert widget.region_styles() == {1: 0, 2: 1}
    widget.run()
    outcome = wait_for_run(qtbot, widget)
    assert outcome.status == "done", outcome.message
    (result,) = _result_layers(viewer)
    meta = result.metadata["impasto"]
    assert meta["mask"] == "regions" and meta["region_styles"] == {1: 0, 2: 1}
    assert meta["styles"] == ["style", "style 2"]


def test_queue_position_is_shown_while_waiting(
    napari_server: Any, dock: Any, qtbot: Any, tiny_content: np.ndarray, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock(napari_server, iterations=2)
    add_content_and_style(viewer, tiny_content, tiny_style)
    with Client(napari_server.address) as other:
        # Another client takes the server's one slot.
        blocker = other.stylize(tiny_content, [tiny_style], size=32, iterations=100_000)
        events = iter(blocker)
        while not isinstance(next(events), Started):
            pass
        widget.run()
        qtbot.waitUntil(lambda: "queued: position 1" in widget.status.text(), timeout=30_000)
        blocker.cancel()
    outcome = wait_for_run(qtbot, widget)
    assert outcome.status == "done", outcome.message


def test_a_run_uses_the_data_as_it_was_when_run_was_pressed(
    napari_server: Any, dock: Any, qtbot: Any, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock(napari_server, iterations=20, size=24)
    stack = _ramps()
    content = _stack_with_style(viewer, widget, stack, tiny_style)

    # The planes a run sends are those of the data when Run was pressed, even when the
    # layer's data is replaced before the worker reads them.
    plan, _ = widget._plan()
    sent = [task.content() for task in plan.tasks]
    content.data = np.zeros((3, 24, 24), np.float32)
    for task, picture in zip(plan.tasks, sent, strict=True):
        np.testing.assert_array_equal(task.content(), picture)

    content.data = stack
    widget.run()
    qtbot.waitUntil(lambda: "iteration" in widget.status.text(), timeout=60_000)
    content.data = np.zeros((1, 24, 24), np.float32)  # fewer slices than when Run was pressed
    outcome = wait_for_run(qtbot, widget)
    assert outcome.status == "done", outcome.message
    (result,) = _result_layers(viewer)
    assert result.data.shape == (3, 24, 24)
    assert all(result.data[z].std() > 0 for z in range(3))


def test_results_and_previews_overlay_the_content_as_run_saw_it(
    napari_server: Any, dock: Any, qtbot: Any, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock(napari_server, iterations=20, size=24)
    stack = _ramps()
    content = _stack_with_style(viewer, widget, stack, tiny_style, scale=(2.0, 0.5, 0.5),
                                colormap="magma", contrast_limits=(0.0, 1.0))  # fmt: skip
    widget.preview_interval.setValue(5)
    widget.run()
    qtbot.waitUntil(lambda: "iteration" in widget.status.text(), timeout=60_000)
    # a 2D projection in its place, on another scale and look: the run goes on as it began
    content.data = stack.max(axis=0)
    content.scale = (1.0, 1.0)
    content.colormap, content.contrast_limits = "gray", (0.5, 0.6)
    outcome = wait_for_run(qtbot, widget)
    assert outcome.status == "done", outcome.message
    (result,) = _result_layers(viewer)
    assert result.data.shape == (3, 24, 24)
    assert tuple(result.scale) == pytest.approx((2.0, 0.5, 0.5))
    assert result.colormap.name == "magma"
    assert tuple(result.contrast_limits) == pytest.approx((0.0, 1.0))

    # The next run's previews reuse the preview layer, drawn as that run's content
    other = viewer.add_image(stack * 2, name="other", colormap="viridis",
                             contrast_limits=(0.0, 2.0), scale=(1.0, 3.0, 3.0))  # fmt: skip
    widget.content.setCurrentText("other")
    widget.stack_mode.setCurrentIndex(widget.stack_mode.findData("slice"))
    preview = viewer.layers["impasto preview"]
    widget.run()
    assert wait_for_run(qtbot, widget).status == "done"
    assert viewer.layers["impasto preview"] is preview  # the same layer, reused
    assert preview.colormap.name == other.colormap.name == "viridis"
    assert tuple(preview.contrast_limits) == pytest.approx((0.0, 2.0))
    assert tuple(preview.scale)[-2:] == pytest.approx((3.0, 3.0))


def test_a_mask_painted_after_it_was_chosen_gives_its_regions(
    napari_server: Any, dock: Any, qtbot: Any, tiny_content: np.ndarray, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock(napari_server, iterations=3)
    add_content_and_style(viewer, tiny_content, tiny_style)
    viewer.add_image(255 - tiny_style, name="style 2", rgb=True)
    widget.add_style_row("style 2", weight=1.0)
    labels = viewer.add_labels(np.zeros(tiny_content.shape[:2], np.uint8), name="cells")
    widget.mask.setCurrentText("cells")
    assert widget.region_styles() == {}
    labels.paint((5, 5), 1, refresh=True)  # the brush, as a user paints
    labels.data_setitem((np.arange(30, 40), np.full(10, 40)), 2)
    qtbot.waitUntil(lambda: widget.region_styles() == {1: 0, 2: 1}, timeout=5_000)
    labels.data[0, 0] = 3  # changed in code: no event, but the run reads the labels again
    plan, _ = widget._plan()
    assert plan_regions(plan)[0] == {1: 0, 2: 1, 3: 0}
    assert plan.tasks[0].mask is not None


def test_a_mask_stack_over_a_2d_content_sends_the_plane_shown(
    napari_server: Any, dock: Any, tiny_content: np.ndarray, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock(napari_server)
    add_content_and_style(viewer, tiny_content, tiny_style)
    stack = np.zeros((5, *tiny_content.shape[:2]), np.uint8)
    stack[3, :, :20] = 1
    viewer.add_labels(stack, name="cells")
    viewer.dims.set_point(0, 3)
    widget.mask.setCurrentText("cells")
    plan, _ = widget._plan()
    assert plan_regions(plan)[0] == {1: 0}
    np.testing.assert_array_equal(plan.tasks[0].mask(), stack[3])


def test_a_mask_with_labels_past_uint16_is_refused_at_run(
    napari_server: Any, dock: Any, qtbot: Any, tiny_content: np.ndarray, tiny_style: np.ndarray,
    notifications: list[Any],
) -> None:  # fmt: skip
    """Not at the slice that holds them, after the slices before it ran."""
    viewer, widget = dock(napari_server)
    _stack_with_style(viewer, widget, np.stack([tiny_content[..., 0]] * 3), tiny_style)
    labels = np.zeros((3, *tiny_content.shape[:2]), np.uint32)
    labels[:, :5] = 1
    labels[2, -5:] = 70_000
    viewer.add_labels(labels, name="cells")
    widget.mask.setCurrentText("cells")
    widget.run()
    outcome = wait_for_run(qtbot, widget)
    assert outcome.status == "failed" and outcome.planes_done == 0
    assert "labels outside 0..65535" in outcome.message
    assert _result_layers(viewer) == []
    assert any("labels outside 0..65535" in n.message for n in notifications)
    viewer.dims.set_point(0, 2)  # the slice that holds them, run alone: refused at Run
    widget.stack_mode.setCurrentIndex(widget.stack_mode.findData("slice"))
    with pytest.raises(ValueError, match=r"labels outside 0\.\.65535"):
        widget._plan()


def test_a_stack_that_fails_part_way_says_which_slices_are_kept(
    napari_server: Any, dock: Any, qtbot: Any, tiny_style: np.ndarray
) -> None:
    viewer, widget = dock(napari_server, iterations=3, size=24)
    stack = np.random.default_rng(0).random((3, 24, 24)).astype(np.float32)
    _stack_with_style(viewer, widget, stack, tiny_style)
    plan_of = widget._plan

    def failing_at_slice_3() -> Any:  # as a lost connection or a full GPU there would
        plan, state = plan_of()

        def fail() -> np.ndarray:
            raise ValueError("impasto: the server went away")

        plan.tasks[2] = dataclasses.replace(plan.tasks[2], content=fail)
        return plan, state

    widget._plan = failing_at_slice_3
    widget.run()
    outcome = wait_for_run(qtbot, widget)
    assert outcome.status == "failed" and outcome.planes_done == 2
    assert "at slice 3 of 3; the 2 finished slice(s) are kept" in widget.status.text()
    (result,) = _result_layers(viewer)
    assert result.data[0].std() > 0 and result.data[1].std() > 0 and not result.data[2].any()


def test_a_masks_labels_are_found_once_per_edit_not_at_each_layer_change(
    napari_server: Any, dock: Any, tiny_content: np.ndarray, tiny_style: np.ndarray, monkeypatch
) -> None:
    """np.unique over a large Labels volume takes seconds, on the GUI thread."""
    viewer, widget = dock(napari_server)
    add_content_and_style(viewer, tiny_content, tiny_style)
    labels = viewer.add_labels(np.ones((3, *tiny_content.shape[:2]), np.uint8), name="cells")
    widget.mask.setCurrentText("cells")
    counted = []
    unique = np.unique

    def counting(*args: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return unique(*args, **kwargs)

    monkeypatch.setattr(np, "unique", counting)
    viewer.add_points([[1, 1, 1]])
    viewer.layers["style"].name = "brush"
    viewer.layers.move(0, 2)
    assert not counted and widget.region_styles() == {1: 0}
    labels.data = np.full((3, *tiny_content.shape[:2]), 2, np.uint8)  # an edit: found again
    widget._refresh_regions()
    assert len(counted) == 1 and widget.region_styles() == {2: 0}


def test_a_reused_preview_layer_is_drawn_as_the_new_runs_result(
    napari_server: Any, dock: Any, qtbot: Any, tiny_style: np.ndarray
) -> None:
    """A grayscale layer through its colormap gives uint8 RGB, drawn at 0..255 whatever the
    preview layer showed before (a float RGB at 0..1, or a uint8 RGB at its own limits)."""
    viewer, widget = dock(napari_server, iterations=2)
    widget.preview_interval.setValue(1)
    y, x = np.mgrid[:32, :32]
    rgb = np.stack([x / 31, y / 31, (x + y) / 62], -1).astype(np.float32)
    viewer.add_image(rgb, name="rgb float", rgb=True)
    viewer.add_image((rgb * 255).astype(np.uint8), name="rgb", rgb=True, contrast_limits=(10, 200))
    viewer.add_image((x * 8).astype(np.uint8), name="gray", colormap="magma")
    viewer.add_image(tiny_style, name="style", rgb=True)
    widget.style_rows[0].layer.setCurrentText("style")
    for before in ("rgb float", "rgb"):
        widget.apply_colormap.setChecked(False)
        widget.content.setCurrentText(before)
        widget.run()
        assert wait_for_run(qtbot, widget).status == "done", widget.last_outcome
        widget.apply_colormap.setChecked(True)
        widget.content.setCurrentText("gray")
        widget.run()
        assert wait_for_run(qtbot, widget).status == "done", widget.last_outcome
        preview = viewer.layers["impasto preview"]
        assert preview.rgb and preview.data.dtype == np.uint8
        assert tuple(preview.contrast_limits) == pytest.approx((0.0, 255.0)), before
        assert tuple(_result_layers(viewer)[-1].contrast_limits) == pytest.approx((0.0, 255.0))


def test_a_stack_result_deleted_during_the_run_comes_back_with_its_slices(
    napari_server: Any, dock: Any, qtbot: Any, tiny_style: np.ndarray, notifications: list[Any]
) -> None:
    viewer, widget = dock(napari_server, iterations=10, size=24)
    _stack_with_style(viewer, widget, _ramps(), tiny_style)
    widget.run()
    qtbot.waitUntil(lambda: "slice 2/3" in widget.status.text(), timeout=60_000)
    (deleted,) = _result_layers(viewer)
    assert deleted.data[0].std() > 0  # the first slice is done
    viewer.layers.remove(deleted)
    assert wait_for_run(qtbot, widget).status == "done", widget.last_outcome
    (result,) = _result_layers(viewer)
    assert all(result.data[z].std() > 0 for z in range(3))  # none left blank
    assert result.metadata["impasto"]["slices_done"] == 3
    assert any("was deleted during the run" in n.message for n in notifications)


def test_a_large_masks_labels_are_counted_off_the_gui_thread(
    napari_server: Any, dock: Any, qtbot: Any, tiny_style: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Counting the labels of a large Labels volume takes seconds: the GUI thread never
    counts more than the plane it sends (here every mask counts as large)."""
    import threading

    monkeypatch.setattr(widget_module, "SYNC_COUNT_PIXELS", 100, raising=False)
    viewer, widget = dock(napari_server, iterations=2, size=24)
    _stack_with_style(viewer, widget, _ramps(), tiny_style)
    viewer.add_image(255 - tiny_style, name="style 2", rgb=True)
    widget.add_style_row("style 2")
    labels = np.zeros((3, 24, 24), np.int32)
    labels[:, :, :12], labels[:, :, 12:] = 1, 2
    layer = viewer.add_labels(labels, name="cells")
    on_gui: list[tuple[int, ...]] = []
    unique = np.unique

    def watched(array: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            on_gui.append(np.shape(array))
        return unique(array, *args, **kwargs)

    monkeypatch.setattr(np, "unique", watched)
    widget.mask.setCurrentText("cells")
    qtbot.waitUntil(lambda: widget.region_styles() == {1: 0, 2: 1}, timeout=10_000)
    for _ in range(2):
        widget._plan()
    assert on_gui == []
    layer.data[1, 0, 0] = 3  # changed in code (no event): the run finds it
    widget.run()
    assert wait_for_run(qtbot, widget).status == "done", widget.last_outcome
    assert on_gui == []
    (result,) = _result_layers(viewer)
    assert result.metadata["impasto"]["region_styles"] == {1: 0, 2: 1, 3: 0}
    assert widget.region_styles() == {1: 0, 2: 1, 3: 0}  # the table lists it now


def test_region_choices_stay_while_a_large_masks_labels_are_counted(
    dock: Any, qtbot: Any, tiny_content: np.ndarray, tiny_style: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A stroke of paint on a large mask has its labels counted again in the background:
    meanwhile the table keeps the styles chosen for its regions (also through a change of the
    styles), a run started then sends them, and they are still there when the count ends."""
    import threading

    monkeypatch.setattr(widget_module, "SYNC_COUNT_PIXELS", 100, raising=False)
    go = threading.Event()  # a count ends once set
    go.set()
    count = widget_module._labels_in

    def slow_count(data: Any) -> list[int]:
        go.wait(30)  # a large volume takes seconds
        return count(data)

    monkeypatch.setattr(widget_module, "_labels_in", slow_count)
    viewer, widget = dock()
    add_content_and_style(viewer, tiny_content, tiny_style)
    viewer.add_image(255 - tiny_style, name="style 2", rgb=True)
    widget.add_style_row("style 2")
    mask = np.zeros(tiny_content.shape[:2], np.uint8)
    mask[:, :24], mask[:, 24:] = 1, 2
    layer = viewer.add_labels(mask, name="cells")
    widget.mask.setCurrentText("cells")
    qtbot.waitUntil(lambda: widget._region_choices() == {1: 0, 2: 1}, timeout=10_000)
    for row, style in enumerate((-1, 0)):  # the user: 1 -> the blend, 2 -> style 1
        choice = widget.regions.cellWidget(row, 1)
        choice.setCurrentIndex(choice.findData(style))
    chosen = {1: -1, 2: 0}
    assert widget._region_choices() == chosen
    go.clear()
    try:
        layer.paint((5, 40), 1, refresh=True)  # a stroke: the labels are counted again
        qtbot.waitUntil(lambda: widget._count_worker is not None, timeout=5_000)
        assert widget._region_choices() == chosen  # the table is not emptied meanwhile
        plan, _ = widget._plan()
        assert plan_regions(plan)[0] == {2: 0}
        widget.add_style_row("style")  # a style change while counting
        assert widget._region_choices() == chosen
        assert widget.regions.cellWidget(0, 1).count() == 4  # the blend and three styles
    finally:
        go.set()
    qtbot.waitUntil(lambda: widget._count_worker is None, timeout=10_000)
    assert widget._region_choices() == chosen
    assert widget.region_styles() == {2: 0}
    plan, _ = widget._plan()
    assert plan_regions(plan)[0] == {2: 0}
