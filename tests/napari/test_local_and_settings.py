"""Local mode starts a server on first use and stops it with napari; settings persist."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from napari_helpers import add_content_and_style, use_remote, wait_for_run
from napari_impasto.connection import LOCAL_SERVERS


def test_local_mode_starts_on_first_run_and_stops_when_napari_closes(
    make_napari_viewer: Any, qtbot: Any, tiny_content: Any, tiny_style: Any
) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("impasto", "impasto")
    widget.set_options(size=32, iterations=2, num_scales=1)
    assert widget.mode.currentData() == "local"
    assert LOCAL_SERVERS.server is None  # nothing runs before the first run
    add_content_and_style(viewer, tiny_content, tiny_style)
    widget.run()
    outcome = wait_for_run(qtbot, widget, timeout=180)
    assert outcome.status == "done", outcome.message
    server = LOCAL_SERVERS.server
    assert server is not None and server.process is not None
    process = server.process
    assert process.poll() is None
    assert widget.server_status.text().startswith(f"SERVING at {server.address}")
    # the device and the precision the server runs in by default
    assert f"cpu, {widget.server_info.precision} ·" in widget.server_status.text()
    assert widget.server_info.precision in ("float32", "bfloat16")
    # a GPU server's default, as GetServerInfo reports it
    widget._on_server_info(
        server.address, dataclasses.replace(widget.server_info, cuda_graphs=True)
    )
    assert f"cpu, {widget.server_info.precision}, CUDA graphs ·" in widget.server_status.text()
    widget._on_server_info(  # and one that compiles its network (--compile)
        server.address, dataclasses.replace(widget.server_info, compiled_network=True)
    )
    status = widget.server_status.text()
    assert f"{widget.server_info.precision}, CUDA graphs, torch.compile ·" in status

    viewer.close()
    qtbot.waitUntil(lambda: process.poll() is not None, timeout=30_000)
    assert LOCAL_SERVERS.server is None


def test_settings_persist_between_sessions(
    napari_server: Any, dock: Any, make_napari_viewer: Any, qtbot: Any, plugin_settings: Any
) -> None:
    _, widget = dock()
    use_remote(widget, napari_server.address, token="not-saved")
    widget.tls.setChecked(False)
    widget.set_options(size=48, iterations=7, style_weight=5000)
    widget.preview_interval.setValue(3)
    widget.check_server()
    qtbot.waitUntil(lambda: widget.server_status.text().startswith("SERVING"), timeout=30_000)
    assert widget.server_info is not None and widget.server_info.device == "cpu"
    widget._save_settings(widget.options())

    saved = json.loads(plugin_settings.read_text())
    assert saved["mode"] == "remote" and saved["address"] == napari_server.address
    assert "not-saved" not in plugin_settings.read_text()  # secrets stay out of the file

    # A new napari session: a fresh viewer and widget read the file.
    _, again = make_napari_viewer().window.add_plugin_dock_widget("impasto", "impasto")
    assert again.mode.currentData() == "remote"
    assert again.address.text() == napari_server.address
    assert again.token.text() == ""
    assert again.preview_interval.value() == 3
    assert again.options()["style_weight"] == 5000
    assert again.options()["size"] == 48 and again.options()["iterations"] == 7


@pytest.mark.parametrize(
    "bad",
    [
        {"size": "big"},
        {"content_weight": "x"},
        {"seed": "abc"},
        {"iterations": None},
        {"tv_weight": -1},
        {"num_scales": 2.5},
    ],
)
def test_a_bad_value_in_the_settings_file_falls_back_to_its_default(
    bad: dict[str, Any], plugin_settings: Any, make_napari_viewer: Any
) -> None:
    plugin_settings.write_text(
        json.dumps({"address": "gpu-host:1", "options": {"style_weight": 5000, "size": 48, **bad}})
    )
    _, widget = make_napari_viewer().window.add_plugin_dock_widget("impasto", "impasto")
    options = widget.options()
    (name,) = bad
    # not sent (until the server answers, only what the user set goes): its default applies
    assert name not in options
    assert name not in widget._user_options  # so a server's default may still apply
    # The other values still load.
    assert options["style_weight"] == 5000 and widget.address.text() == "gpu-host:1"
    if name != "size":
        assert options["size"] == 48


def test_a_preset_chosen_before_the_server_answers_is_the_servers(
    napari_server: Any, make_napari_viewer: Any, qtbot: Any, plugin_settings: Any
) -> None:
    """The controls hold stand-ins until the server answers: they must not override the
    preset's values on the server."""
    _, widget = make_napari_viewer().window.add_plugin_dock_widget("impasto", "impasto")
    use_remote(widget, napari_server.address)
    widget.set_options(size=32)
    index = widget.preset.findText("paper")
    widget.preset.setCurrentIndex(index)
    widget.preset.activated.emit(index)  # the user's choice
    assert widget.server_info is None
    assert widget.options() == {"preset": "paper", "size": 32}
    widget.check_server()
    qtbot.waitUntil(lambda: widget.server_info is not None, timeout=30_000)
    paper = widget.server_info.presets["paper"]
    # once it answers, the controls show the preset's values (where the user set none)
    assert widget.options()["iterations"] == paper["iterations"]
    assert widget.options()["init"] == paper["init"]
    assert widget.options()["size"] == 32


def _choose_preset(widget: Any, name: str) -> None:
    index = widget.preset.findText(name)
    widget.preset.setCurrentIndex(index)
    widget.preset.activated.emit(index)  # the user's choice


def test_only_the_users_options_are_saved_and_a_later_preset_sets_its_own(
    napari_server: Any, make_napari_viewer: Any, qtbot: Any, plugin_settings: Any,
    tiny_content: Any, tiny_style: Any,
) -> None:  # fmt: skip
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("impasto", "impasto")
    use_remote(widget, napari_server.address)
    widget.preview_interval.setValue(0)
    widget.set_options(size=32, iterations=2, num_scales=2, seed=7)
    add_content_and_style(viewer, tiny_content, tiny_style)
    for _ in range(2):  # the second run reads controls the server's defaults filled in
        widget.run()
        assert wait_for_run(qtbot, widget).status == "done", widget.last_outcome
    saved = json.loads(plugin_settings.read_text())["options"]
    assert saved == {"size": 32, "iterations": 2, "num_scales": 2, "seed": 7}

    # The next session: the paper preset, chosen before the server answered, then 3
    # iterations. The number of scales set earlier is one the preset sets: the preset's wins.
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("impasto", "impasto")
    add_content_and_style(viewer, tiny_content, tiny_style)
    _choose_preset(widget, "paper")
    widget.set_options(iterations=3)
    widget.run()
    assert wait_for_run(qtbot, widget).status == "done", widget.last_outcome
    paper = widget.server_info.presets["paper"]
    (result,) = [layer for layer in viewer.layers if "impasto" in layer.metadata]
    used = result.metadata["impasto"]["settings"]
    assert used["preset"] == "paper"
    for name in ("init", "num_scales", "pooling"):
        assert used[name] == paper[name], name
    assert used["iterations"] == 3 and used["seed"] == 7
    assert widget.num_scales.value() == paper["num_scales"]
    saved = json.loads(plugin_settings.read_text())["options"]
    assert saved == {"preset": "paper", "size": 32, "iterations": 3, "seed": 7}


def test_choosing_a_preset_takes_back_the_options_it_sets(
    napari_server: Any, dock: Any, qtbot: Any, plugin_settings: Any
) -> None:
    _, widget = dock(napari_server)  # size 32, 4 iterations, 1 scale, seed 7
    widget.check_server()
    qtbot.waitUntil(lambda: widget.server_info is not None, timeout=30_000)
    _choose_preset(widget, "paper")
    paper = widget.server_info.presets["paper"]
    options = widget.options()
    assert options["iterations"] == paper["iterations"] and options["init"] == paper["init"]
    assert options["size"] == 32  # the size is no preset's: the user's stays
    widget._save_settings(options)
    saved = json.loads(plugin_settings.read_text())["options"]
    assert saved == {"preset": "paper", "size": 32, "seed": 7}
    _choose_preset(widget, "default")
    default = widget.server_info.presets["default"]
    assert widget.options()["num_scales"] == default["num_scales"]
    assert widget.options()["size"] == 32


@pytest.mark.parametrize(
    "bad",
    [
        {"preview_interval": 3_000_000_000},  # past what the control holds
        {"preview_interval": -1},
        {"preview_interval": True},
        {"stack_mode": "cube"},
        {"options": {"seed": 2**70}},  # past the wire's uint64
        {"options": {"iterations": 2**40}},
    ],
)
def test_an_out_of_range_setting_falls_back_to_its_default(
    bad: dict[str, Any], plugin_settings: Any, make_napari_viewer: Any
) -> None:
    plugin_settings.write_text(json.dumps({"address": "gpu-host:1", **bad}))
    _, widget = make_napari_viewer().window.add_plugin_dock_widget("impasto", "impasto")
    assert widget.preview_interval.value() == 10
    assert widget.stack_mode.currentData() == "slice"
    assert widget.options() == {}  # nothing the user set: the server's defaults apply
    assert widget.address.text() == "gpu-host:1"  # the rest still loads
