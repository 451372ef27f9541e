"""The objective of runs that share a pass, computed for all of them at once.

A batch shares the network's forward and backward pass; without this each run's losses (a Gram
product and a loss per style layer, the content and total-variation terms, and their backward)
were its own operations, about 200 of the 280 an iteration costs a run in a batch on top of the
shared pass (benchmarks/host_overhead.py), each a kernel launch on a GPU, where the host's
launches set the pace. Here each term is one batched operation for the whole batch: the targets
of the runs are stacked once per batch and stage, their weights are vectors.

Runs qualify when their style covers the whole image (one region, no mask); the engine computes
the others one by one (``_Stage.objective``). A qualifying run alone is a batch of one: its
targets are used as they are, not copied. Every run's terms and gradient are its own, as alone,
up to float rounding (sums in another order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .losses import content_layer_losses, style_layer_losses, tv_losses

# The loss terms of a run, in the order every objective records them.
TERMS = ("content", "style", "tv", "total")


@dataclass
class SharedTargets:
    """The stacked targets and weights of one batch of stages (kept by its first stage)."""

    key: tuple[int, ...]  # the stages' ids: a new batch (a run stopped, a new stage) restacks
    content: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer: (N, C, h, w), (N,) weights
    style: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer: (N, C, C), (N,) weight x area
    weights: torch.Tensor  # (3, N): content_weight, style_weight, tv_weight of each run
    tv: bool
    scales: tuple[float, ...] = ()
    divisor: torch.Tensor | None = field(default=None, repr=False)


def qualifies(stage: Any) -> bool:
    """Whether a stage's objective can be computed with other runs': one style region over the
    whole image."""
    return len(stage.regions) == 1 and stage.regions[0].mask is None


def _stack(tensors: list[torch.Tensor | None], along: str) -> torch.Tensor:
    """The runs' targets of one layer along a new first axis ("new": (C, C) Grams) or the
    first axis they have ("first": (1, C, h, w) features); None (a run whose weight for the
    layer is 0, so it has no target) as zeros. One run's are its own tensors, not a copy."""
    like = next(t for t in tensors if t is not None)
    if len(tensors) == 1:
        return like[None] if along == "new" else like
    filled = [t if t is not None else torch.zeros_like(like) for t in tensors]
    return torch.stack(filled) if along == "new" else torch.cat(filled)


def _vector(stage: Any, values: Sequence[float]) -> torch.Tensor:
    """Float32 ``values`` on the stage's device, copied without waiting for the stream
    (``Engine._upload``): these are made while a batch's forward pass runs."""
    return stage.engine._upload(torch.tensor(values, dtype=torch.float32))


def _targets(stages: Sequence[Any]) -> SharedTargets:
    def vector(values: list[float]) -> torch.Tensor:
        return _vector(stages[0], values)

    content = {}
    names = dict.fromkeys(n for s in stages for n, w in s.options.content_layers.items() if w)
    for name in names:
        weights = [s.options.content_layers.get(name, 0.0) for s in stages]
        targets = [s.content_targets.get(name) for s in stages]
        content[name] = (_stack(targets, along="first"), vector(weights))
    style = {}
    names = dict.fromkeys(n for s in stages for n, w in s.options.style_layers.items() if w)
    for name in names:
        weights = [s.options.style_layers.get(name, 0.0) * s.regions[0].area for s in stages]
        targets = [s.regions[0].targets.get(name) for s in stages]
        style[name] = (_stack(targets, along="new"), vector(weights))
    weights = torch.stack([
        vector([s.options.content_weight for s in stages]),
        vector([s.options.style_weight for s in stages]),
        vector([s.options.tv_weight for s in stages]),
    ])  # fmt: skip
    return SharedTargets(
        key=tuple(id(s) for s in stages), content=content, style=style, weights=weights,
        tv=any(s.options.tv_weight for s in stages),
    )  # fmt: skip


def objective(
    stages: Sequence[Any], x: torch.Tensor, feats: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """For stages that all ``qualify``, with x their images stacked and feats the network's
    features of x: the sum of their objectives as each optimiser sees it (its total divided by
    its scale once known), and their loss terms as an (N, 4) matrix in ``TERMS`` order."""
    lead = stages[0]
    key = tuple(id(s) for s in stages)
    shared: SharedTargets | None = lead.shared
    if shared is None or shared.key != key:
        shared = lead.shared = _targets(stages)
    scales = tuple(s.scale for s in stages)
    if shared.divisor is None or shared.scales != scales:
        shared.scales = scales
        shared.divisor = _vector(lead, [s or 1.0 for s in scales])
    zero = x.new_zeros((len(stages),), dtype=torch.float32)
    content = zero
    for name, (targets, weights) in shared.content.items():
        content = content + weights * content_layer_losses(feats[name], targets)
    style = zero
    for name, (targets, weights) in shared.style.items():
        style = style + style_layer_losses(feats[name], targets, weights)
    tv = tv_losses(x) * shared.weights[2] if shared.tv else zero
    content = content * shared.weights[0]
    style = style * shared.weights[1]
    total = content + style + tv
    terms = torch.stack([content, style, tv, total], dim=1).detach()
    return (total / shared.divisor).sum(), terms
