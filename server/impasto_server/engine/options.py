"""The engine's settings: one resolved dataclass, its presets, and the one error type."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

#: VGG19's convolution layers in order; features are taken after each layer's ReLU.
LAYER_NAMES: tuple[str, ...] = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3", "conv3_4",
    "conv4_1", "conv4_2", "conv4_3", "conv4_4",
    "conv5_1", "conv5_2", "conv5_3", "conv5_4",
)  # fmt: skip

PRESETS_NAMES = ("default", "paper")
INITS = ("content", "noise", "image")
OPTIMIZERS = ("lbfgs", "adam")
POOLINGS = ("max", "average")
COLOR_PRESERVATIONS = ("none", "luminance", "color_statistics")
PRECISIONS = ("float32", "bfloat16", "float16")

PAPER_STYLE_LAYERS = {name: 0.2 for name in ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")}

#: Bounds every request is checked against (the server may tighten max_pixels).
SIZE_RANGE = (16, 8192)
ITERATIONS_RANGE = (1, 100_000)
NUM_SCALES_RANGE = (1, 8)
STYLE_SCALE_RANGE = (0.1, 4.0)


class EngineError(ValueError):
    """A request the engine cannot run; ``field`` names the offending option or input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Cancelled(Exception):
    """Raised out of ``Engine.run`` when ``should_stop`` asked it to stop."""


@dataclass(frozen=True)
class StyleOptions:
    """Every setting of one optimisation, resolved (no field means "default")."""

    preset: str = "default"
    size: int = 512
    iterations: int = 300
    content_weight: float = 1.0
    style_weight: float = 1e3
    tv_weight: float = 0.0
    content_layers: Mapping[str, float] = field(default_factory=lambda: {"conv4_2": 1.0})
    style_layers: Mapping[str, float] = field(default_factory=lambda: dict(PAPER_STYLE_LAYERS))
    style_scale: float = 1.0
    init: str = "content"
    optimizer: str = "lbfgs"
    learning_rate: float = 10.0
    pooling: str = "max"
    seed: int | None = None
    color_preservation: str = "none"
    num_scales: int = 1
    scales: tuple[int, ...] = ()
    precision: str = "float32"

    @classmethod
    def from_preset(cls, preset: str = "default", **overrides: Any) -> StyleOptions:
        """The preset's values with ``overrides`` on top; None values are ignored."""
        if preset not in PRESETS:
            raise EngineError("preset", f"unknown preset {preset!r}; choose one of {PRESETS_NAMES}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise EngineError(min(unknown), "unknown option")
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(PRESETS[preset], **given)

    def replace(self, **changes: Any) -> StyleOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["content_layers"] = dict(self.content_layers)
        d["style_layers"] = dict(self.style_layers)
        d["scales"] = list(self.scales)
        return d

    def schedule(self) -> tuple[int, ...]:
        """The long side of each coarse-to-fine stage, the last being ``size``."""
        if self.scales:
            stages = [s for s in self.scales if s < self.size]
            return (*stages, self.size)
        n = self.num_scales
        return tuple(
            max(SIZE_RANGE[0], round(self.size / math.sqrt(2) ** (n - 1 - i))) for i in range(n)
        )

    def validate(self) -> None:
        """Raise EngineError naming the first field whose value is out of range."""
        found = self.problems()
        if found:
            raise found[0]

    def problems(self) -> list[EngineError]:
        """An EngineError for every field whose value is out of range, in the fields' order."""
        checks = (
            partial(_choice, "preset", self.preset, PRESETS_NAMES),
            partial(_int_range, "size", self.size, SIZE_RANGE),
            partial(_int_range, "iterations", self.iterations, ITERATIONS_RANGE),
            partial(_non_negative, "content_weight", self.content_weight),
            partial(_non_negative, "style_weight", self.style_weight),
            partial(_non_negative, "tv_weight", self.tv_weight),
            partial(_layers, "content_layers", self.content_layers, allow_empty=False),
            partial(_layers, "style_layers", self.style_layers, allow_empty=False),
            partial(_float_range, "style_scale", self.style_scale, STYLE_SCALE_RANGE),
            partial(_choice, "init", self.init, INITS),
            partial(_choice, "optimizer", self.optimizer, OPTIMIZERS),
            self._check_learning_rate,
            partial(_choice, "pooling", self.pooling, POOLINGS),
            self._check_seed,
            partial(_choice, "color_preservation", self.color_preservation, COLOR_PRESERVATIONS),
            partial(_int_range, "num_scales", self.num_scales, NUM_SCALES_RANGE),
            self._check_scales,
            partial(_choice, "precision", self.precision, PRECISIONS),
        )
        found = []
        for check in checks:
            try:
                check()
            except EngineError as exc:
                found.append(exc)
        return found

    def _check_learning_rate(self) -> None:
        if _finite("learning_rate", self.learning_rate) <= 0:
            raise EngineError("learning_rate", "must be > 0")

    def _check_seed(self) -> None:
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**64):
            raise EngineError("seed", "must be an integer in [0, 2**64)")

    def _check_scales(self) -> None:
        previous = 0
        for s in self.scales:
            _int_range("scales", s, SIZE_RANGE)
            if s <= previous:
                raise EngineError("scales", "must be strictly increasing")
            previous = s
        if not self.scales:
            return
        try:
            _int_range("size", self.size, SIZE_RANGE)
        except EngineError:
            return  # size's own violation says it; comparing with it would add a second
        if self.scales[-1] > self.size:
            raise EngineError(
                "scales", f"{self.scales[-1]} is above size ({self.size}), the last stage's side"
            )
        if len(self.schedule()) > NUM_SCALES_RANGE[1]:
            raise EngineError(
                "scales", f"at most {NUM_SCALES_RANGE[1]} stages, size's own included"
            )


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise EngineError(name, f"{value!r} is not one of {allowed}")


def _int_range(name: str, value: object, bounds: tuple[int, int]) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineError(name, f"must be an integer, got {value!r}")
    if not bounds[0] <= value <= bounds[1]:
        raise EngineError(name, f"{value} is outside [{bounds[0]}, {bounds[1]}]")


def _float_range(name: str, value: object, bounds: tuple[float, float]) -> None:
    if not bounds[0] <= _finite(name, value) <= bounds[1]:
        raise EngineError(name, f"{value} is outside [{bounds[0]}, {bounds[1]}]")


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EngineError(name, f"must be a finite number, got {value!r}")
    return float(value)


def _non_negative(name: str, value: object) -> None:
    if _finite(name, value) < 0:
        raise EngineError(name, f"must be >= 0, got {value!r}")


def _layers(name: str, layers: Mapping[str, float], *, allow_empty: bool) -> None:
    if not isinstance(layers, Mapping) or (not layers and not allow_empty):
        raise EngineError(name, "must name at least one layer")
    for layer, weight in layers.items():
        if layer not in LAYER_NAMES:
            raise EngineError(name, f"unknown layer {layer!r}; layers are {', '.join(LAYER_NAMES)}")
        _non_negative(f"{name}.{layer}", weight)
    if all(w == 0 for w in layers.values()):
        raise EngineError(name, "at least one layer weight must be > 0")


PRESETS: dict[str, StyleOptions] = {
    # Tuned defaults: start from the content, max pooling (as VGG19 was trained), four
    # coarse-to-fine scales, beta = 1e3; measured by benchmarks/time_to_quality.py.
    "default": StyleOptions(preset="default", style_weight=1000.0, num_scales=4),
    # "A Neural Algorithm of Artistic Style": white-noise start, average pooling,
    # L-BFGS, conv4_2 content, conv1_1..conv5_1 style with equal weights, alpha/beta = 1e-3.
    "paper": StyleOptions(
        preset="paper",
        iterations=500,
        content_weight=1.0,
        style_weight=1e3,
        init="noise",
        pooling="average",
        num_scales=1,
    ),
}
