"""The feature network under torch.compile, each new pass shape compiled in the background.

On an H200 the network compiled by torch.compile (its default mode, static shapes) ran the
default job's iteration in 0.74x the time at 512 px and 0.64x at 768 px, but compiled 14.2 s
before the first iteration of the first shape and 9.3 s for each new one (benchmarks/gpu.py,
compile): a job that waited for that would lose more than it gains, and a server meets a new
shape with every image size, stage and batch size. So here no pass ever waits for a compile.
A pass of a shape not compiled yet runs the network as it is (eagerly) and asks for its
compile; one thread compiles the shapes asked for, one at a time, each by running one pass
and its backward at that shape on zeros; from then on passes of that shape run the compiled
code. The passes never compile themselves: they call torch's run-only form of the compiled
network (``torch._dynamo.run``), which runs a compiled entry whose guards hold and otherwise
the network eagerly.

A shape here is the pass's batch of one or batch of two or more (the batch dimension is
compiled dynamic, so every batch size from 2 shares one compile; 1 is its own, as torch
specialises it), the image's height and width, memory layout and precision, and the layers,
pooling and precision of the network. Should torch's guards refuse the compiled code for a
pass of a compiled shape (for a difference the shape does not hold), that pass runs eagerly.
At most ``max_shapes`` are compiled in a process's engine.

The compile's own pass needs the GPU's memory: it starts only where the device has twice the
memory plan's quick bound per pixel (memory.py) free for a pass of that shape, or is tried
again later. It runs inside the GPU gate's ``background()`` (graphs.py), so a recording of a
CUDA graph is not made while it lasts: new batches run eagerly meanwhile. A pass that runs
under a dispatch mode (a memory probe's count, memory_budget.py) is never compiled code: its
count is of the eager pass. So a job's memory plan is the eager pass's; the compiled pass's
peak has not been measured against it.

Off unless asked for (``Engine(compile_net=True)``, the server's ``--compile``). On an H200,
once a server's shapes were compiled, 16 clients' batched jobs ran 1.07 to 1.25x the jobs a
minute and one client's 0.99 to 1.14x (benchmarks/gpu.py, server-compiled); but while the
shapes of a stream of new sizes compiled, its jobs a minute fell to 0.23x (server-shapes: eager
passes, no recordings while a compile runs, and the compile's own Python in this process). On
a CPU a compiled pass measured no faster (0.95 to 1.19x the eager time,
benchmarks/compiled_pass.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .graphs import gate
from .memory import QUICK_BYTES_PER_PIXEL

log = logging.getLogger("impasto_server.engine")

#: Seconds before a shape whose compile found no room on the device is tried again.
RETRY_SECONDS = 30.0

Key = tuple[Any, ...]


#: Compiled entries torch may keep for the network's forward while compiling here. Its own
#: limit (8) stops a storm of recompiles, but every compile here is deliberate (one a shape,
#: ``max_shapes`` an engine at most), and the entries of every engine in the process count
#: against it, as they share the forward's code: a test run's few compiling engines passed
#: it, and torch then ran the forward eagerly for good, for every engine.
_ENTRIES = 1 << 12


def _dynamo_settings() -> dict[str, Any]:
    """torch._dynamo settings for the compiles: one compiled entry per shape (the batch
    dimension marked dynamic, no other dimension made dynamic by a recompile), and room for
    the entries (the limits' names changed in torch 2.6)."""
    config = torch._dynamo.config
    settings: dict[str, Any] = {"automatic_dynamic_shapes": False}
    for names in (
        ("recompile_limit", "cache_size_limit"),
        ("accumulated_recompile_limit", "accumulated_cache_size_limit"),
    ):
        name = next((name for name in names if hasattr(config, name)), None)
        if name is not None:
            settings[name] = max(getattr(config, name), _ENTRIES)
    return settings


class CompiledNet:
    """Calls like the network (``net(x, layers, pooling, dtype)``), running the compiled code
    where its shape is compiled and the network eagerly otherwise (see above). ``backend``:
    torch.compile's (tests use a cheaper one than inductor)."""

    def __init__(
        self, net: torch.nn.Module, *, backend: str | Callable[..., Any] = "inductor",
        max_shapes: int = 32,
    ) -> None:  # fmt: skip
        self.net = net
        self.max_shapes = max_shapes
        self._compiled = torch.compile(net, backend=self._counted(backend))
        self._run_only = torch._dynamo.run(self._compiled)
        self._settings = _dynamo_settings()
        self._cond = threading.Condition()
        self._ready: set[Key] = set()
        self._failed: set[Key] = set()
        # shapes asked for, in order: the compile's input shape and the network's arguments
        self._wanted: dict[Key, tuple[tuple[int, ...], tuple[Any, ...]]] = {}
        self._later: dict[Key, float] = {}  # no room: not before this time
        self._compiling: Key | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.seconds = 0.0  # spent compiling, all shapes together
        self.compiled_passes = 0  # passes that ran the compiled code (the compiles' own not)
        self.passes = 0  # every pass through here, compiled or not (a probe's count's not)

    def _counted(self, backend: str | Callable[..., Any]) -> Callable[..., Any]:
        """``backend`` with each call of the code it compiles counted, outside the compile's
        own pass: what ran compiled, not what was meant to (torch's guards have the last
        word)."""
        from torch._dynamo.backends.registry import lookup_backend

        compile_graph = lookup_backend(backend)

        def counted(graph: Any, example_inputs: Any) -> Callable[..., Any]:
            compiled = compile_graph(graph, example_inputs)

            def run(*args: Any) -> Any:
                if threading.current_thread() is not self._thread:
                    self.compiled_passes += 1
                return compiled(*args)

            return run

        return counted

    @staticmethod
    def key(x: torch.Tensor, layers: tuple[str, ...], pooling: str,
            dtype: torch.dtype | None) -> Key:  # fmt: skip
        n, c, h, w = x.shape
        layout = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return (min(n, 2), c, h, w, layout, x.dtype, x.device, x.requires_grad,
                tuple(layers), pooling, dtype)  # fmt: skip

    def __call__(
        self, x: torch.Tensor, layers: tuple[str, ...], pooling: str = "max",
        dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        if _get_current_dispatch_mode() is not None:  # a probe's count: of the eager pass
            return self.net(x, layers, pooling, dtype)
        self.passes += 1
        key = self.key(x, layers, pooling, dtype)
        if key in self._ready:
            return self._run_only(x, layers, pooling, dtype)
        self._want(key, x, (layers, pooling, dtype))
        return self.net(x, layers, pooling, dtype)

    def _want(self, key: Key, x: torch.Tensor, args: tuple[Any, ...]) -> None:
        if key in self._wanted or key in self._failed or key == self._compiling:
            return
        if len(self._ready) >= self.max_shapes:
            return
        with self._cond:
            if self._closed or key in self._ready or key in self._wanted:
                return
            if key in self._failed or key == self._compiling:
                return
            if len(self._ready) + len(self._wanted) + (self._compiling is not None) >= (
                self.max_shapes
            ):  # fmt: skip
                return
            if time.monotonic() < self._later.get(key, 0.0):
                return
            # The compile's input: x's shape, a batch of two for two or more (its dtype, device,
            # layout and gradient are in the key)
            shape = (min(x.shape[0], 2), *x.shape[1:])
            self._wanted[key] = (shape, args)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="impasto-compile", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        """Shapes compiled, failed and waiting, seconds spent compiling, passes run compiled
        and in all."""
        with self._cond:
            return {
                "compiled": len(self._ready), "failed": len(self._failed),
                "waiting": len(self._wanted) + (self._compiling is not None),
                "seconds": self.seconds, "compiled_passes": self.compiled_passes,
                "passes": self.passes,
            }  # fmt: skip

    def wait(self, timeout: float) -> bool:
        """Whether every shape asked for was compiled (or failed) within ``timeout`` seconds
        (for benchmarks and tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._wanted or self._compiling is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """No more compiles; the one under way ends as it will (its thread is a daemon)."""
        with self._cond:
            self._closed = True
            self._wanted.clear()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key = next(iter(self._wanted))
                shape, args = self._wanted.pop(key)
                self._compiling = key
            outcome: bool | None = False
            try:
                outcome = self._compile(key, shape, args)
            finally:
                with self._cond:  # with _compiling: no moment where the key is in neither
                    self._compiling = None
                    if outcome is True:
                        self._ready.add(key)
                    elif outcome is False:
                        self._failed.add(key)
                    else:  # no room now
                        self._later[key] = time.monotonic() + RETRY_SECONDS
                    self._cond.notify_all()

    def _room(self, shape: tuple[int, ...], device: torch.device) -> bool:
        if device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free >= 2 * QUICK_BYTES_PER_PIXEL * shape[0] * shape[-2] * shape[-1]

    def _compile(self, key: Key, shape: tuple[int, ...], args: tuple[Any, ...]) -> bool | None:
        """Compile ``key``'s shape by running a pass and its backward at it: True once done,
        False where it failed (logged; the shape then always runs eagerly), None where the
        device had no room for the pass now."""
        device = key[6]
        if not self._room(shape, device):
            log.info("no room on %s to compile a pass of %s now", device, shape)
            return None
        started = time.perf_counter()
        try:
            with gate.background(), torch._dynamo.config.patch(**self._settings):
                layout = torch.channels_last if key[4] else torch.contiguous_format
                x = torch.zeros(shape, dtype=key[5], device=device)
                x = x.contiguous(memory_format=layout).requires_grad_(key[7])
                if shape[0] > 1:
                    torch._dynamo.mark_dynamic(x, 0)
                feats = self._compiled(x, *args)
                if x.requires_grad:  # the backward is compiled at its first call
                    sum(f.float().sum() for f in feats.values()).backward()
                del feats, x
                if device.type == "cuda":
                    torch.cuda.current_stream(device).synchronize()
        except Exception:  # that shape then runs eagerly, as before
            log.warning("could not compile the network's pass of shape %s", shape, exc_info=True)
            return False
        finally:
            self.seconds += time.perf_counter() - started
        log.info(
            "compiled the network's pass of %s in %.1f s", shape, time.perf_counter() - started
        )
        return True
