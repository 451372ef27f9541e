"""How much memory a run needs and how much one job may have, so that a job too large for the
device is refused before it starts (instead of failing at the start of its last stage, after
its coarser ones ran), and L-BFGS keeps fewer pairs where its full history would not fit.

A run's peak memory is linear in the pixels of its stage: the activations kept for the backward
pass, their gradients and the Gram inputs all scale with the image, the weights' casts and the
Gram matrices do not. ``Engine.plan_memory`` measures that line for the job's own options by
running it for two iterations at two small sizes under a tensor-counting dispatch mode
(``MemoryBudget``), then adds the L-BFGS pairs, whose size it knows: each pair is two float32
copies of the image. ``benchmarks/memory_plan.py`` compares the estimate with measured peaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

#: One L-BFGS pair (a step s and a gradient change y) per pixel: 2 x 3 float32 channels.
PAIR_BYTES_PER_PIXEL = 2 * 3 * 4
#: Fewer pairs than this (where a stage would use more) and L-BFGS is no longer worth running:
#: the job is refused instead (Adam needs no history).
MIN_PAIRS = 5
#: Headroom on the measured line: allocator rounding, and on a GPU the convolution workspaces,
#: which the tensor count does not see.
MARGIN = 1.10
#: Probes of a job larger than these run at these pixel counts (its aspect ratio kept).
PROBE_PIXELS = (128 * 128, 192 * 192)
#: A bound no job's pixel cost has come near (measured: about 1.9-2.7 KB per pixel with the
#: default layers, plus 24 bytes per L-BFGS pair): jobs this far inside the capacity skip the
#: probe. Scaled by the regions of a mask and by style_scale**2 (see ``quick_bound``).
QUICK_BYTES_PER_PIXEL = 16 << 10
QUICK_FIXED_BYTES = 512 << 20


class InsufficientMemory(Exception):
    """A job whose estimated peak is above the memory one job may use."""

    def __init__(self, needed: int, capacity: int, largest: tuple[int, int] | None) -> None:
        self.needed = needed
        self.capacity = capacity
        self.largest = largest  # (h, w) of the largest result that fits, None if none does
        fits = (
            f"the largest result that fits with these options is about {largest[0]}x{largest[1]}"
            if largest
            else "no size fits with these options"
        )
        super().__init__(
            f"the job needs about {_mib(needed)} MiB of memory and this server has "
            f"{_mib(capacity)} MiB for one job; {fits} (fewer mask regions, a smaller "
            "style_scale or, on a GPU, bfloat16 also need less)"
        )


def _mib(n: int) -> int:
    return math.ceil(n / (1 << 20))


@dataclass(frozen=True)
class Footprint:
    """Peak bytes of one stage of a run: ``fixed + pixels * per_pixel``, without L-BFGS pairs."""

    fixed: float
    per_pixel: float

    def stage(self, pixels: int, pairs: int) -> int:
        per_pixel = self.per_pixel + pairs * PAIR_BYTES_PER_PIXEL
        return math.ceil(MARGIN * (self.fixed + pixels * per_pixel))

    def pairs_that_fit(self, pixels: int, capacity: int) -> int:
        room = capacity / MARGIN - self.fixed - pixels * self.per_pixel
        return max(0, math.floor(room / (pixels * PAIR_BYTES_PER_PIXEL)))

    def largest(self, aspect: float, pairs: int, capacity: int) -> tuple[int, int] | None:
        """(h, w) with ``h / w = aspect`` of the largest stage that fits ``capacity``."""
        per_pixel = self.per_pixel + pairs * PAIR_BYTES_PER_PIXEL
        if per_pixel <= 0 or capacity / MARGIN <= self.fixed:
            return None
        pixels = (capacity / MARGIN - self.fixed) / per_pixel
        height = math.sqrt(pixels * aspect)
        return max(1, math.floor(height)), max(1, math.floor(height / aspect))

    @classmethod
    def fit(cls, points: list[tuple[int, int]]) -> Footprint:
        """The line through two (pixels, peak bytes) probes; never below the larger probe."""
        (p1, b1), (p2, b2) = sorted(points)
        per_pixel = max(0.0, (b2 - b1) / (p2 - p1)) if p2 > p1 else 0.0
        return cls(fixed=max(0.0, b2 - per_pixel * p2), per_pixel=per_pixel)


@dataclass(frozen=True)
class MemoryPlan:
    """What one run will use: its estimated peak, the capacity it was checked against, and the
    L-BFGS pairs of each stage (None: Adam, or the default of the stage's iterations)."""

    needed: int | None  # None: not estimated (the job is far inside the capacity, or no check)
    capacity: int | None
    pairs: tuple[int, ...] | None = None
    reduced: bool = False  # some stage keeps fewer pairs than its iterations would use
    quick: int | None = None  # the quick bound of a run passed unmeasured

    @property
    def bound(self) -> int | None:
        """Bytes the run may use at most: ``needed`` where estimated, else the quick bound
        that let it pass unmeasured (None: no check)."""
        return self.needed if self.needed is not None else self.quick


def quick_bound(pixels: int, regions: int, style_scale: float) -> int:
    """Bytes no run of ``pixels`` has come near, whatever its options (100 L-BFGS pairs
    included); a job below the capacity by this much needs no probe."""
    per_pixel = QUICK_BYTES_PER_PIXEL * max(1, regions) * max(1.0, style_scale) ** 2
    return int(QUICK_FIXED_BYTES + pixels * (per_pixel + 100 * PAIR_BYTES_PER_PIXEL))


def device_capacity(device: torch.device, reserved_bytes: int) -> int:
    """The memory one job may use on ``device``, read now: what is free on a GPU, or what the
    host (or its cgroup, in a container) can still give on a CPU, less ``reserved_bytes``
    (the style-target cache) and a little headroom."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        headroom = max(512 << 20, total // 32)
    else:
        import psutil

        free = psutil.virtual_memory().available
        cgroup = cgroup_memory()
        if cgroup is not None:
            limit, usage = cgroup
            free = min(free, max(0, limit - usage))
        headroom = max(512 << 20, free // 16)
    return max(0, free - reserved_bytes - headroom)


#: (limit, usage) files of a cgroup's memory: v2, then v1.
_CGROUP_FILES = (
    ("memory.max", "memory.current"),
    ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
)


def cgroup_memory(root: Path = Path("/sys/fs/cgroup")) -> tuple[int, int] | None:
    """(limit, usage) in bytes of this process's cgroup (v2, else v1, as a container sees
    them), None without a limit."""
    for limit_name, usage_name in _CGROUP_FILES:
        try:
            raw = (root / limit_name).read_text().strip()
            if raw == "max":
                return None
            usage = int((root / usage_name).read_text().strip())
            limit = int(raw)
        except (OSError, ValueError):
            continue
        if limit >= 1 << 60:  # v1's "no limit"
            return None
        return limit, usage
    return None
