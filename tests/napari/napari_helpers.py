"""Helpers shared by the napari tests (a unique module name, so it never shadows another)."""

from __future__ import annotations

from typing import Any

import numpy as np


def use_remote(widget: Any, address: str, token: str = "") -> None:
    widget.mode.setCurrentIndex(widget.mode.findData("remote"))
    widget.address.setText(address)
    widget.token.setText(token)


def wait_for_run(qtbot: Any, widget: Any, timeout: float = 90) -> Any:
    """Block (processing Qt events) until the widget's run ends; return its outcome."""
    qtbot.waitUntil(lambda: widget.run_state is None, timeout=int(timeout * 1000))
    return widget.last_outcome


def add_content_and_style(viewer: Any, content: np.ndarray, style: np.ndarray) -> None:
    viewer.add_image(content, name="content", rgb=content.ndim == 3 and content.shape[-1] in (3, 4))
    viewer.add_image(style, name="style", rgb=True)
