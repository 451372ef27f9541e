"""Options as plain Python values (the engine's names, str enums) <-> the wire ``Options``.

Shared by the client (keyword arguments in, settings dicts out) and the server (which turns the
dict into the engine's StyleOptions), so both ends agree on every name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from impasto.v1 import style_transfer_pb2 as pb

PRESETS = {"default": pb.PRESET_DEFAULT, "paper": pb.PRESET_PAPER}
INITS = {"content": pb.INIT_CONTENT, "noise": pb.INIT_NOISE, "image": pb.INIT_IMAGE}
OPTIMIZERS = {"lbfgs": pb.OPTIMIZER_LBFGS, "adam": pb.OPTIMIZER_ADAM}
POOLINGS = {"max": pb.POOLING_MAX, "average": pb.POOLING_AVERAGE}
COLOR_PRESERVATIONS = {
    "none": pb.COLOR_PRESERVATION_NONE,
    "luminance": pb.COLOR_PRESERVATION_LUMINANCE,
    "color_statistics": pb.COLOR_PRESERVATION_COLOR_STATISTICS,
}
PRECISIONS = {
    "float32": pb.PRECISION_FLOAT32,
    "bfloat16": pb.PRECISION_BFLOAT16,
    "float16": pb.PRECISION_FLOAT16,
}
OUTPUT_FORMATS = {
    "raw": pb.IMAGE_FORMAT_RAW,
    "png": pb.IMAGE_FORMAT_PNG,
    "jpeg": pb.IMAGE_FORMAT_JPEG,
    "tiff": pb.IMAGE_FORMAT_TIFF,
}
#: What the server makes of the client's bearer token (ServerInfo.token).
TOKEN_STATES = {
    "not_needed": pb.TOKEN_STATE_NOT_NEEDED,
    "missing": pb.TOKEN_STATE_MISSING,
    "accepted": pb.TOKEN_STATE_ACCEPTED,
    "invalid": pb.TOKEN_STATE_INVALID,
    "expired": pb.TOKEN_STATE_EXPIRED,
}

#: Option name -> its enum table, for the enum-typed options.
ENUMS: dict[str, dict[str, int]] = {
    "preset": PRESETS,
    "init": INITS,
    "optimizer": OPTIMIZERS,
    "pooling": POOLINGS,
    "color_preservation": COLOR_PRESERVATIONS,
    "precision": PRECISIONS,
}
INTS = ("size", "iterations", "seed", "num_scales")
FLOATS = ("content_weight", "style_weight", "tv_weight", "style_scale", "learning_rate")
LAYERS = ("content_layers", "style_layers")
OPTION_NAMES = (*ENUMS, *INTS, *FLOATS, *LAYERS, "scales")


class OptionError(ValueError):
    """An option value that cannot be put on the wire; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def enum_name(table: Mapping[str, int], value: int) -> str | None:
    for name, number in table.items():
        if number == value:
            return name
    return None


def options_to_proto(options: Mapping[str, Any]) -> pb.Options:
    """Build wire Options from engine-named values; None means "the server's default"."""
    message = pb.Options()
    for name, value in options.items():
        if value is None:
            continue
        if name not in OPTION_NAMES:
            raise OptionError(name, f"unknown option; options are {', '.join(OPTION_NAMES)}")
        if name in ENUMS:
            table = ENUMS[name]
            if value not in table:
                raise OptionError(name, f"{value!r} is not one of {', '.join(table)}")
            setattr(message, name, table[value])
        elif name in INTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise OptionError(name, f"must be a non-negative integer, got {value!r}")
            if value >= (2**64 if name == "seed" else 2**32):
                raise OptionError(name, f"{value} is too large")
            setattr(message, name, value)
        elif name in FLOATS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(name, f"must be a number, got {value!r}")
            setattr(message, name, float(value))
        elif name in LAYERS:
            if not isinstance(value, Mapping):
                raise OptionError(name, "must be a mapping of layer name to weight")
            target = getattr(message, name)
            for layer, weight in value.items():
                target.add(layer=str(layer), weight=float(weight))
        else:  # scales
            try:
                message.scales.extend(int(s) for s in value)
            except (TypeError, ValueError) as exc:
                raise OptionError(name, f"must be a list of integers: {exc}") from exc
    return message


def options_from_proto(message: pb.Options) -> dict[str, Any]:
    """The fields set in wire Options, as engine-named values (unset fields are left out)."""
    values: dict[str, Any] = {}
    for name, table in ENUMS.items():
        number = getattr(message, name)
        if number:
            values[name] = enum_name(table, number) or number  # unknown numbers pass to checks
    for name in (*INTS, *FLOATS):
        if message.HasField(name):
            values[name] = getattr(message, name)
    for name in LAYERS:
        entries = getattr(message, name)
        if entries:
            values[name] = {entry.layer: entry.weight for entry in entries}
    if message.scales:
        values["scales"] = tuple(message.scales)
    return values
