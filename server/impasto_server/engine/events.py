"""What a run reports: one Progress per iteration, then one Result."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .options import StyleOptions


@dataclass(frozen=True)
class Progress:
    iteration: int  # 1-based, over all scales
    total: int
    losses: dict[str, float]  # weighted terms: content, style, tv, total
    elapsed: float  # seconds since the run started
    eta: float  # estimated seconds left
    scale_index: int
    scale_count: int
    height: int  # of the current stage
    width: int
    preview: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Result:
    image: np.ndarray = field(repr=False)  # the content's dtype and channel count
    settings: StyleOptions
    losses: dict[str, float]
    elapsed: float
    iterations: int
