"""The npe2 manifest: valid, and it gives napari the dock widget and the sample data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import napari_impasto
from napari_impasto.widget import ImpastoWidget


def test_npe2_validate_passes() -> None:
    manifest = Path(napari_impasto.__file__).with_name("napari.yaml")
    for target in ("impasto", str(manifest)):  # by distribution name and by file
        result = subprocess.run(
            [sys.executable, "-m", "npe2", "validate", target],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "valid" in result.stdout


def test_the_plugin_never_imports_torch() -> None:
    code = (
        "import sys, napari_impasto.widget, napari_impasto.worker, napari_impasto.sample_data; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'impasto_server')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_widget_docks_from_the_manifest(make_napari_viewer: Any) -> None:
    viewer = make_napari_viewer()
    dock_widget, widget = viewer.window.add_plugin_dock_widget("impasto", "impasto")
    assert isinstance(widget, ImpastoWidget)
    assert dock_widget.name == "impasto (impasto)"
    # Nothing is started before the first run: local mode waits.
    assert widget.mode.currentData() == "local"
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_sample_data_opens_content_and_style(make_napari_viewer: Any) -> None:
    viewer = make_napari_viewer()
    viewer.open_sample("impasto", "content_and_style")
    assert [layer.name for layer in viewer.layers] == ["astronaut", "brush strokes"]
    assert viewer.layers["astronaut"].rgb and viewer.layers["astronaut"].data.shape == (512, 512, 3)
    assert viewer.layers["brush strokes"].data.dtype.name == "uint8"
    _, widget = viewer.window.add_plugin_dock_widget("impasto", "impasto")
    # The widget proposes the photograph as content and the other image as the style.
    assert widget.content.currentText() == "astronaut"
    assert widget.style_rows[0].layer.currentText() == "brush strokes"
