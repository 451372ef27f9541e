"""Wire messages <-> the engine's inputs: parse a StylizeRequest, describe StyleOptions.

Everything here is cheap (no torch): a bad request is refused before it reaches the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from impasto import images, wire
from impasto.v1 import style_transfer_pb2 as pb

from impasto_server.engine.options import (
    ITERATIONS_RANGE,
    LAYER_NAMES,
    NUM_SCALES_RANGE,
    PRESETS,
    SIZE_RANGE,
    STYLE_SCALE_RANGE,
    EngineError,
    StyleOptions,
)


class RequestError(ValueError):
    """A request refused before any work; ``violations`` are (wire field, description)."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 4096 * 4096
    max_input_pixels: int = 8192 * 8192
    max_styles: int = 16
    # Each mask region's features and Grams are the job's own: memory (and the check of it
    # before the job is queued) grows with them.
    max_regions: int = 64
    max_preview_interval: int = 100_000


@dataclass
class ParsedRequest:
    content: np.ndarray
    styles: list[np.ndarray]
    options: StyleOptions
    style_weights: list[float] | None = None
    mask: np.ndarray | None = None
    region_styles: dict[int, int] | None = None
    init_image: np.ndarray | None = None
    output_format: str = "raw"  # raw | png | jpeg | tiff
    preview_interval: int = 0
    preview_size: int = 0
    #: The engine's memory plan for this job (``Engine.plan_memory``), set when it is admitted.
    memory_plan: Any = None

    def engine_kwargs(self) -> dict[str, Any]:
        return {
            "style_weights": self.style_weights,
            "mask": self.mask,
            "region_styles": self.region_styles,
            "init_image": self.init_image,
        }


#: Engine error fields -> the request field a client must change.
_FIELD_OF = {
    "content": "content",
    "styles": "styles",
    "style_weights": "styles.weight",
    "mask": "mask.labels",
    "region_styles": "mask.regions",
    "init_image": "init_image",
}


def wire_field(engine_field: str) -> str:
    """The StylizeRequest field path an EngineError's field refers to."""
    head = engine_field.split("[", 1)[0].split(".", 1)[0]
    if head in _FIELD_OF:
        if head == "styles" and "[" in engine_field:
            return engine_field.split("]", 1)[0] + "].image"
        if head == "style_weights" and "[" in engine_field:
            return "styles" + engine_field[len("style_weights") :].split("]", 1)[0] + "].weight"
        return _FIELD_OF[head]
    return f"options.{engine_field}"


def parse_request(
    request: pb.StylizeRequest,
    limits: Limits,
    default_precision: str = "float32",
    on_image: Callable[[np.ndarray], None] | None = None,
) -> ParsedRequest:
    """Decode and check everything that needs no model; raise RequestError.

    An unset precision takes ``default_precision``, the device's best (bfloat16 on most GPUs).
    ``on_image`` sees each image as soon as it is decoded, before the next one is; what it
    raises ends the parse (a request over the server's memory, a call that ended).
    """
    violations: list[tuple[str, str]] = []

    def image(message: pb.Image, name: str, labels: bool = False) -> np.ndarray | None:
        try:
            # read-only where it can be: the engine only reads the pixels (one copy fewer)
            array = images.from_wire(
                message, field=name, max_pixels=limits.max_input_pixels, writable=False,
                labels=labels,
            )  # fmt: skip
        except images.ImageError as exc:
            violations.append((exc.field, exc.message))
            return None
        if on_image is not None:
            on_image(array)
        return array

    content = image(request.content, "content") if request.HasField("content") else None
    if not request.HasField("content"):
        violations.append(("content", "a content image is required"))
    if not request.styles:
        violations.append(("styles", "at least one style image is required"))
    if len(request.styles) > limits.max_styles:
        violations.append(("styles", f"at most {limits.max_styles} style images per request"))
    styles: list[np.ndarray] = []
    weights: list[float] = []
    for index, style in enumerate(request.styles[: limits.max_styles]):
        if not style.HasField("image"):
            violations.append((f"styles[{index}].image", "a style image is required"))
        else:
            array = image(style.image, f"styles[{index}].image")
            if array is not None:
                styles.append(array)
        if not math.isfinite(style.weight) or style.weight < 0:
            violations.append((f"styles[{index}].weight", "must be finite and >= 0"))
        weights.append(style.weight)
    style_weights = weights if any(w > 0 for w in weights) else None

    mask = None
    region_styles = None
    if request.HasField("mask"):
        if not request.mask.HasField("labels"):
            violations.append(("mask.labels", "a label image is required with a mask"))
        else:
            mask = image(request.mask.labels, "mask.labels", labels=True)
            if mask is not None and (mask.ndim != 2 or mask.dtype.kind != "u"):
                violations.append(
                    ("mask.labels", "must be a single-channel uint8 or uint16 label image")
                )
                mask = None
        region_styles = {}
        if len(request.mask.regions) > limits.max_regions:
            count = len(request.mask.regions)
            violations.append(
                ("mask.regions", f"at most {limits.max_regions} regions per request, not {count}")
            )
        for index, region in enumerate(request.mask.regions[: limits.max_regions]):
            if region.label in region_styles:
                violations.append((f"mask.regions[{index}].label", f"label {region.label} twice"))
            if region.style_index >= len(request.styles):
                violations.append(
                    (
                        f"mask.regions[{index}].style_index",
                        f"{region.style_index} but there are {len(request.styles)} styles",
                    )
                )
            region_styles[region.label] = region.style_index
        if content is not None and mask is not None:
            try:
                mask = fit_mask(mask, content.shape[:2])
            except ValueError as exc:
                violations.append(("mask.labels", str(exc)))
                mask = None

    init_image = image(request.init_image, "init_image") if request.HasField("init_image") else None

    for name in wire.LAYERS:  # a mapping on the engine's side: a second weight would win
        named: set[str] = set()
        for index, entry in enumerate(getattr(request.options, name)):
            if entry.layer in named:
                violations.append((f"options.{name}[{index}].layer", f"{entry.layer} twice"))
            named.add(entry.layer)

    options: StyleOptions | None = None
    try:
        values = wire.options_from_proto(request.options)
        for name in ("preset", *wire.ENUMS):
            if isinstance(values.get(name), int):
                raise EngineError(name, f"unknown enum value {values[name]}")
        preset = values.pop("preset", "default")
        values.setdefault("precision", default_precision)
        options = StyleOptions.from_preset(preset, **values)
        violations.extend((wire_field(exc.field), exc.message) for exc in options.problems())
    except EngineError as exc:
        violations.append((wire_field(exc.field), exc.message))

    output_format = "raw"
    if request.output_format == pb.IMAGE_FORMAT_UNSPECIFIED:
        if request.HasField("content") and request.content.WhichOneof("data") == "encoded":
            output_format = "png"
    else:
        name = wire.enum_name(wire.OUTPUT_FORMATS, request.output_format)
        if name is None:
            violations.append(("output_format", f"unknown format {request.output_format}"))
        else:
            output_format = name
    if request.preview_interval > limits.max_preview_interval:
        violations.append(("preview_interval", f"at most {limits.max_preview_interval}"))
    if request.preview_size and not SIZE_RANGE[0] <= request.preview_size <= SIZE_RANGE[1]:
        violations.append(("preview_size", f"0 or within [{SIZE_RANGE[0]}, {SIZE_RANGE[1]}]"))

    if violations:
        raise RequestError(violations)
    assert content is not None and options is not None
    return ParsedRequest(
        content=content,
        styles=styles,
        options=options,
        style_weights=style_weights,
        mask=mask,
        region_styles=region_styles if mask is not None else None,
        init_image=init_image,
        output_format=output_format,
        preview_interval=request.preview_interval,
        preview_size=request.preview_size,
    )


def fit_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape`` when the aspect ratios agree."""
    if mask.shape == shape:
        return mask
    height, width = shape
    if abs(mask.shape[0] / mask.shape[1] - height / width) > 0.02 * (height / width):
        raise ValueError(
            f"shape {mask.shape} does not have the content's aspect ratio ({height}x{width})"
        )
    rows = np.minimum((np.arange(height) + 0.5) * mask.shape[0] / height, mask.shape[0] - 1)
    cols = np.minimum((np.arange(width) + 0.5) * mask.shape[1] / width, mask.shape[1] - 1)
    return mask[rows.astype(np.intp)[:, None], cols.astype(np.intp)[None, :]]


# ---------------------------------------------------------------- outgoing


def options_message(options: StyleOptions) -> pb.Options:
    """Every setting of ``options`` as wire Options (seed only when known)."""
    values = options.to_dict()
    values["scales"] = list(values.get("scales") or [])
    return wire.options_to_proto(values)


def result_message_bytes(content: np.ndarray, output_format: str, height: int, width: int) -> int:
    """At most how many bytes a result (or a preview, never larger) of ``height`` x ``width``
    in the content's dtype and channels takes on the wire in ``output_format``: deflate may
    store incompressible rows as they are, JPEG of noise may exceed 8 bits a sample."""
    channels = images.channels_of(content)
    size = content.dtype.itemsize
    if output_format == "jpeg":
        per_pixel = 1.5 * min(channels, 3)
    elif output_format in ("raw", "tiff"):
        per_pixel = channels * size
    else:  # PNG: float32 goes as 16-bit
        per_pixel = channels * min(size, 2)
    return int(height * width * per_pixel) + height + (64 << 10)


def image_message(array: np.ndarray, output_format: str) -> pb.Image:
    if output_format == "raw":
        return pb.Image(raw=images.raw_of(images.as_array(array)))
    return pb.Image(encoded=images.encode(array, output_format))


def allowed_values(supported_precisions: tuple[str, ...]) -> pb.AllowedValues:
    return pb.AllowedValues(
        layers=list(LAYER_NAMES),
        presets=[wire.PRESETS[p] for p in PRESETS],
        inits=list(wire.INITS.values()),
        optimizers=list(wire.OPTIMIZERS.values()),
        poolings=list(wire.POOLINGS.values()),
        color_preservations=list(wire.COLOR_PRESERVATIONS.values()),
        precisions=[wire.PRECISIONS[p] for p in supported_precisions],
        output_formats=list(wire.OUTPUT_FORMATS.values()),
        size=pb.Range(min=SIZE_RANGE[0], max=SIZE_RANGE[1]),
        iterations=pb.Range(min=ITERATIONS_RANGE[0], max=ITERATIONS_RANGE[1]),
        num_scales=pb.Range(min=NUM_SCALES_RANGE[0], max=NUM_SCALES_RANGE[1]),
        style_scale=pb.Range(min=STYLE_SCALE_RANGE[0], max=STYLE_SCALE_RANGE[1]),
    )
