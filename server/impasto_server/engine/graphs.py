"""A batch's forward and backward pass as one CUDA graph, replayed each iteration.

On a GPU at 512 px the host's launches set an iteration's pace: some 230 kernels, the GPU busy
about a third of the time (benchmarks/gpu.py, profile). A CUDA graph records the pass's kernels
once and replays them with one launch. The pass is a graph's ideal: fixed shapes, its input
the images that the optimisers move in place, and its outputs (each image's gradient and the
loss terms) written to the same memory every time. The optimiser steps stay outside it by
default: an Adam step is one fused kernel; an L-BFGS step depends on host values (which pairs
it keeps). With ``Engine(capturable_lbfgs=True)`` the L-BFGS steps keep those values on the
device (lbfgs.py) and are recorded after the pass, in the same graph (``steps`` below): an
iteration is then one replay and one read.

On by default on a CUDA device (``Engine(cuda_graphs=None)``): on an H200, 2.3x (L-BFGS) and
2.4x (Adam) faster an iteration at 512 px in bfloat16, 1.15x at 1024 px, the losses equal to
the bit (benchmarks/gpu.py, graphs). A graph is recorded for a batch once its runs' objectives
are fixed (their scale known: from their third pass in a stage, so a memory probe's two passes
never record one) and is dropped when the batch changes (a new stage, a run that ends). Its
memory is the pass's own, kept between iterations instead of freed after each: what the step
allocates then comes on top of the pass's peak (one float32 copy of the image at most, 0.6% of
a job's count: the memory plan's estimate stays 1.09x or more of it, benchmarks/memory_plan.py).
A pass that cannot be recorded runs as before.

A recording must have the GPU to itself: with the server's ``--max-running`` above 1, other
threads' passes during a recording failed on an H200 ("operation not permitted when stream is
capturing" in an eager convolution, "Cannot prepare for replay during capturing stage" in a
replay) and broke the recording (benchmarks/gpu.py, the server part's 16 clients each alone),
although the recording's mode is ``thread_local``; a memory probe in a request's thread is such
a pass too. So the engine's GPU work runs inside ``using_gpu()`` (many threads at once), and a
recording, like an emptying of the allocator's cache (which the allocator refuses, an internal
assertion, during a recording), inside ``alone()``, which waits for every other thread to leave
its ``using_gpu`` and keeps new ones out until it ends. GPU work that may take seconds and
that nothing waits for (a network's compile, compiled.py) runs inside ``background()``
instead: a recording does not wait for it but is not made while it lasts (the pass runs
eagerly, and is recorded once it has ended).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger("impasto_server.engine")


class Busy(RuntimeError):
    """``GpuGate.alone(unless_background=True)`` while background work runs."""


class GpuGate:
    """Many threads' GPU work at once (``use``), or one thread alone (``alone``): a
    readers-writer lock that lets no new user in while one waits to be alone, so recordings
    are never starved. Both can be entered again by a thread inside them; a thread inside
    ``use`` that asks to be alone sets its own use aside while it waits and while it is alone,
    so two such threads do not wait for each other. A thread inside ``use`` must not wait for
    another thread (a lock, a queue): that thread may be waiting to be alone.

    ``background`` is a use that ``alone`` does not wait for: it starts only while no thread is
    alone or waiting to be, and while one lasts ``in_background`` is true and
    ``alone(unless_background=True)`` raises ``Busy`` instead of being alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._users = 0  # threads inside use(), less those set aside while alone
        self._alone: threading.Thread | None = None
        self._waiting = 0  # threads waiting to be alone: new users wait behind them
        self._background = 0  # threads inside background()
        self._local = threading.local()

    def _depth(self, kind: str) -> int:
        return getattr(self._local, kind, 0)

    @contextlib.contextmanager
    def use(self):
        depth = self._depth("use")
        if depth == 0 and self._depth("alone") == 0:
            with self._cond:
                while self._alone is not None or self._waiting:
                    self._cond.wait()
                self._users += 1
        self._local.use = depth + 1
        try:
            yield
        finally:
            self._local.use = depth
            if depth == 0 and self._depth("alone") == 0:
                with self._cond:
                    self._users -= 1
                    self._cond.notify_all()

    @contextlib.contextmanager
    def background(self):
        with self._cond:
            while self._alone is not None or self._waiting:
                self._cond.wait()
            self._background += 1
        try:
            yield
        finally:
            with self._cond:
                self._background -= 1
                self._cond.notify_all()

    @property
    def in_background(self) -> bool:
        """Whether some thread is inside ``background()`` now (a read without the lock)."""
        return self._background > 0

    @contextlib.contextmanager
    def alone(self, unless_background: bool = False):
        depth = self._depth("alone")
        if depth:
            self._local.alone = depth + 1
            try:
                yield
            finally:
                self._local.alone = depth
            return
        aside = self._depth("use") > 0
        with self._cond:
            self._users -= aside
            self._waiting += 1
            self._cond.notify_all()
            try:
                while self._alone is not None or self._users:
                    self._cond.wait()
            except BaseException:
                self._users += aside
                raise
            finally:
                self._waiting -= 1
                self._cond.notify_all()
            if unless_background and self._background:
                self._users += aside
                self._cond.notify_all()
                raise Busy("GPU work in the background")
            self._alone = threading.current_thread()
        self._local.alone = 1
        try:
            yield
        finally:
            self._local.alone = 0
            with self._cond:
                self._alone = None
                self._users += aside  # its own use again, as it was
                self._cond.notify_all()

    @property
    def alone_thread(self) -> threading.Thread | None:
        """The thread alone now, if any (for tests)."""
        return self._alone


#: The process's one gate: the CUDA context is the process's.
gate = GpuGate()
using_gpu = gate.use


def empty_cache() -> None:
    """``torch.cuda.empty_cache()``, with the GPU to itself (never during a recording)."""
    if torch.cuda.is_available():
        with gate.alone():
            torch.cuda.empty_cache()


@contextlib.contextmanager
def _capture(graph: torch.cuda.CUDAGraph, stream: torch.cuda.Stream, keep_cache: bool):
    """``torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local")`` less what
    torch does beyond synchronising as a capture begins: it empties the pinned host memory
    cache too (torch 2.11 to 2.14 at least), and the engine's copies to the GPU
    (``Engine._upload``) come from that cache, so each stage's recording would free the pinned
    blocks of the batch's uploads (freeing pinned memory waits for the device) and the next
    stage start would pin them anew (the driver locks each page: slow). The pinned cache
    holds a few blocks of the copies' sizes, each at most PINNED_UPLOAD bytes (32 MiB).

    The device's cache is emptied as torch does, unless ``keep_cache``: the allocator then
    keeps the blocks cached by the eager passes before it, so the passes after it need no new
    device allocations, but the graph's own memory cannot take those blocks (nothing is freed
    during a capture), so a job near the memory limit may fail to record (it then runs
    eagerly)."""
    torch.cuda.synchronize()
    if not keep_cache:
        torch.cuda.empty_cache()
    with torch.cuda.stream(stream):
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            yield
        finally:
            graph.capture_end()


class PassGraphs:
    """The graph of one batch's pass while the batch lasts (one per ``Engine._drive``).
    ``keep_cache``: record without emptying the allocator's cache first (see ``_capture``;
    off, torch's way: runs 6 and 7 found no clear gain)."""

    def __init__(self, device: torch.device, keep_cache: bool = False) -> None:
        self.device = device
        self.keep_cache = keep_cache
        self.enabled = True
        self._key: tuple[int, ...] | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._terms: torch.Tensor | None = None

    def release(self) -> None:
        self._key = self._graph = self._terms = None

    def run(
        self, stages: Sequence[Any], evaluate: Callable[[Sequence[Any]], torch.Tensor],
        steps: Callable[[Sequence[Any]], None] | None = None,
    ) -> torch.Tensor | None:  # fmt: skip
        """The loss terms of ``stages`` (as ``evaluate(stages)`` returns them) from replaying
        their pass's graph, recorded now if it is a new batch; each stage's gradient is then in
        its ``x.grad``, and where ``steps`` is given, ``steps(stages)`` (optimiser steps that
        read no host value) ran after the pass, in the same graph. None where the pass must
        run eagerly, and ``steps`` did not run (recording failed once: this batch goes on
        without graphs; or GPU work runs in the background: recorded at a later pass)."""
        key = tuple(id(stage) for stage in stages)
        if key != self._key:
            self.release()
            if not self.enabled or gate.in_background:
                return None
            try:
                self._record(key, stages, evaluate, steps)
            except Busy:  # background work began meanwhile: a later pass records it
                for stage in stages:
                    stage.x.grad = None
                return None
            except Exception:  # the pass runs eagerly instead
                log.warning("could not record the pass as a CUDA graph", exc_info=True)
                self.enabled = False
                for stage in stages:
                    stage.x.grad = None
                return None
        assert self._graph is not None and self._terms is not None
        self._graph.replay()
        return self._terms

    def _record(
        self, key: tuple[int, ...], stages: Sequence[Any],
        evaluate: Callable[[Sequence[Any]], torch.Tensor],
        steps: Callable[[Sequence[Any]], None] | None,
    ) -> None:  # fmt: skip
        # As torch's documentation asks: a pass first on the side stream the recording will use
        # (lazy initialisations, and cuDNN's autotuning where it is on, happen outside the
        # recording), then the recording, with every gradient unset so the recorded backward writes
        # them in the graph's memory, where each replay writes them again. The steps are left out of
        # that first pass (unlike the pass, a step done twice is not the same step: the recording
        # runs nothing, the replay after it runs them once); they ran eagerly before (a graph comes
        # from a stage's third pass), their kernels and libraries are ready.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            evaluate(stages)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        for stage in stages:
            stage.x.grad = None
        graph = torch.cuda.CUDAGraph()
        # Alone (see above); thread_local as well, for whatever GPU work runs outside the gate.
        with gate.alone(unless_background=True), _capture(graph, stream, self.keep_cache):
            terms = evaluate(stages)
            if steps is not None:
                steps(stages)
        self._key, self._graph, self._terms = key, graph, terms
