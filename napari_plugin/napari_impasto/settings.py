"""The widget's settings, kept between napari sessions as a small JSON file.

The file lives in the user's config folder (``platformdirs.user_config_dir("impasto")``), or
wherever ``IMPASTO_NAPARI_SETTINGS`` points (tests use a temporary folder). The token is never
written: secrets stay out of plain-text files; ``IMPASTO_TOKEN`` can supply it instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PATH = "IMPASTO_NAPARI_SETTINGS"
ENV_TOKEN = "IMPASTO_TOKEN"
#: The largest preview interval (iterations) the widget offers.
PREVIEW_INTERVAL_MAX = 10_000
_INT32_MAX = 2**31 - 1  # what a Qt spin box holds
_UINT64_MAX = 2**64 - 1  # the wire's seed


@dataclass
class PluginSettings:
    mode: str = "local"  # "local" or "remote"
    address: str = "127.0.0.1:50051"
    tls: bool = False
    root_certificates: str = ""  # path to a PEM file; empty: the system's roots
    # The user's last choices, by option name (size, iterations, ...); server defaults otherwise.
    options: dict[str, Any] = field(default_factory=dict)
    preview_interval: int = 10
    stack_mode: str = "slice"  # "slice" or "stack"
    apply_colormap: bool = False


def settings_path() -> Path:
    override = os.environ.get(ENV_PATH)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("impasto")) / "napari.json"


def load() -> PluginSettings:
    """The saved settings; defaults where the file is missing, unreadable or outdated."""
    try:
        raw = json.loads(settings_path().read_text())
    except (OSError, ValueError):
        return PluginSettings()
    if not isinstance(raw, dict):
        return PluginSettings()
    known = {f.name: f for f in dataclasses.fields(PluginSettings)}
    values: dict[str, Any] = {}
    defaults = PluginSettings()
    for name, value in raw.items():
        # A value of the wrong type or out of range (a hand-edited file) falls back to the
        # default.
        if name not in known:
            continue
        default = getattr(defaults, name)
        # (true is an int to isinstance, but no preview interval)
        same_type = isinstance(value, type(default)) and (
            isinstance(value, bool) == isinstance(default, bool)
        )
        check = _FIELD_CHECKS.get(name)
        if same_type and (check is None or check(value)):
            values[name] = value
    if "options" in values:
        values["options"] = _valid_options(values["options"])
    return PluginSettings(**values)


_FIELD_CHECKS: dict[str, Callable[[Any], bool]] = {
    "mode": lambda v: v in ("local", "remote"),
    "preview_interval": lambda v: 0 <= v <= PREVIEW_INTERVAL_MAX,
    "stack_mode": lambda v: v in ("slice", "stack"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_OPTION_CHECKS: dict[str, Callable[[Any], bool]] = {
    "preset": lambda v: isinstance(v, str),
    "init": lambda v: isinstance(v, str),
    "color_preservation": lambda v: isinstance(v, str),
    "size": lambda v: _is_number(v) and v == int(v) and 1 <= v <= _INT32_MAX,
    "iterations": lambda v: _is_number(v) and v == int(v) and 1 <= v <= _INT32_MAX,
    "num_scales": lambda v: _is_number(v) and v == int(v) and 1 <= v <= _INT32_MAX,
    "content_weight": lambda v: _is_number(v) and v >= 0,
    "style_weight": lambda v: _is_number(v) and v >= 0,
    "tv_weight": lambda v: _is_number(v) and v >= 0,
    "seed": lambda v: (
        v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _UINT64_MAX)
    ),
}


def _valid_options(options: dict[str, Any]) -> dict[str, Any]:
    """The saved options the widget can use; a bad value (a hand-edited or outdated file) is
    left out, so that option falls back to its default while the others still load."""
    return {
        name: value
        for name, value in options.items()
        if name in _OPTION_CHECKS and _OPTION_CHECKS[name](value)
    }


def save(settings: PluginSettings) -> None:
    """Write the settings; a read-only config folder only costs the persistence."""
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(dataclasses.asdict(settings), indent=2, sort_keys=True))
        temporary.replace(path)  # atomic, so a crash never leaves half a file
    except OSError:
        pass


def token_from_environment() -> str:
    return os.environ.get(ENV_TOKEN, "")
