"""Counting the reads of device values into Python, for tests and benchmarks.

Every ``.item()``, ``float(t)``, ``bool(t)`` (an ``if`` on a tensor) or tensor passed where a
number is expected goes through ``aten._local_scalar_dense``; on a GPU each one waits for the
device's queue to drain (a synchronisation). Counting that operator counts them on any device,
the CPU included. (``.tolist()`` and copies to the host are not counted.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """``with HostReads() as reads: ...`` then ``reads.count``; counts this thread only."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))
