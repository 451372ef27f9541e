"""A simulated device-memory budget for one job, so out-of-memory handling can be exercised on
a CPU (where nothing else would run out before the whole machine does).

Inside ``MemoryBudget(limit)``, every tensor an operation creates in this thread counts
against ``limit`` bytes until it is freed; the operation that crosses the limit raises
``torch.OutOfMemoryError`` just as a CUDA allocation would. The count is a close estimate
(views share their base's storage and are not counted), which is all a test of the failure
path needs. Dispatch modes are per thread, so other jobs running at once are not affected.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class MemoryBudget(TorchDispatchMode):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__()
        self.limit = limit_bytes
        self.live = 0
        self.peak = 0
        self._lock = threading.Lock()

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self.live -= nbytes

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        added = 0
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() in inputs:
                continue  # a view or an in-place result: no new memory
            nbytes = storage.nbytes()
            added += nbytes
            weakref.finalize(tensor, self._release, nbytes)
        with self._lock:
            self.live += added
            self.peak = max(self.peak, self.live)
            over = self.live > self.limit
            live = self.live
        if over:
            raise torch.OutOfMemoryError(
                f"simulated device memory budget of {self.limit} bytes exceeded "
                f"({live} bytes live after {func})"
            )
        return out
