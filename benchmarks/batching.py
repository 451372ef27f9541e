"""Same-shaped jobs as one batch against the same jobs one after another, in-process.

    python benchmarks/batching.py [--device cpu|cuda] [--size 256] [--iterations 30] [--jobs 4]

Runs ``--jobs`` jobs (each its own content crop, one style, Adam and L-BFGS) first alone, one
after another, then together through Engine.run_batch, and prints per optimizer: seconds for
all jobs each way and their ratio (below 1: batching pays), and how far the batched images are
from the solo ones: the mean and largest 8-bit pixel difference, and the yardstick distances
(impasto_server.engine.yardstick) of both, so "equally good" can be read off.

What float tolerance means for a whole optimisation: the same solo jobs run again with other
convolution kernels (cuDNN's heuristics instead of its autotuner, or the other way round, on a
GPU; PyTorch's own convolutions instead of oneDNN's on a CPU), which add the same products in
another order, as a batch's kernels do; how far those images are from the first solo ones is
printed beside the batch's distance. A solo job's image is only defined to that distance: where
the autotuner is on, it may choose other kernels in another process.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import numpy as np
import torch
from impasto import samples
from impasto_server.engine import Engine, Progress, Result, StyleOptions
from impasto_server.engine.yardstick import Yardstick
from machine import describe  # beside this script


def _first_apart(solo: list[float], batched: list[float]) -> int | None:
    """The first iteration (1-based) whose losses differ by more than 1e-5 relative."""
    for iteration, (a, b) in enumerate(zip(solo, batched), start=1):
        if abs(a - b) > 1e-5 * abs(a):
            return iteration
    return None


@contextlib.contextmanager
def other_kernels(device: str):
    """Convolutions by other kernels than the engine's usual ones inside the block."""
    if device.startswith("cuda"):
        saved = torch.backends.cudnn.benchmark  # the heuristics (the engine's) or the autotuner
        torch.backends.cudnn.benchmark = not saved
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = saved
        return
    with warnings.catch_warnings():  # setting oneDNN's flags warns of Intel GPUs' TF32
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False, allow_tf32=False):
            yield


def _pixels_apart(first: list[np.ndarray], second: list[np.ndarray]) -> tuple[float, int]:
    diff = np.concatenate([np.abs(a.astype(int) - b).ravel() for a, b in zip(first, second)])
    return float(diff.mean()), int(diff.max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--precision", default=None, help="default: the engine's")
    args = p.parse_args()

    engine = Engine(device=args.device)
    precision = args.precision or engine.default_precision
    full = samples.content()
    step = max(1, (full.shape[1] - full.shape[0] // 2) // max(1, args.jobs - 1))
    contents = [  # same shape, different pictures
        np.ascontiguousarray(full[:, i * step : i * step + full.shape[0] // 2 + 1])[:, : full.shape[0] // 2]
        for i in range(args.jobs)
    ]  # fmt: skip
    style = samples.style(size=args.size)
    print(f"device: {describe(engine.device)}; {args.jobs} jobs of {args.size} px, "
          f"{args.iterations} iterations, {precision}")  # fmt: skip
    print(f"{'optimizer':9} {'alone s':>8} {'batch s':>8} {'ratio':>6} {'px mean':>8} "
          f"{'px max':>6} {'apart at':>8} {'style alone':>11} {'style batch':>11} "
          f"{'kern mean':>9} {'kern max':>8}")  # fmt: skip
    for optimizer in ("adam", "lbfgs"):
        options = StyleOptions.from_preset(
            "default", size=args.size, iterations=args.iterations, num_scales=1, seed=0,
            optimizer=optimizer, precision=precision,
        )  # fmt: skip
        # warm up (kernels, caches, style targets)
        list(engine.run(contents[0], [style], options.replace(iterations=2)))
        sync = torch.cuda.synchronize if engine.device.startswith("cuda") else (lambda: None)
        sync()
        start = time.perf_counter()
        runs = [list(engine.run(c, [style], options)) for c in contents]
        alone = [events[-1].image for events in runs]
        sync()
        alone_s = time.perf_counter() - start
        start = time.perf_counter()
        prepared = [engine.prepare(c, [style], options) for c in contents]
        batched: list[np.ndarray] = [np.empty(0)] * len(contents)
        losses: list[list[float]] = [[] for _ in contents]
        for index, event in engine.run_batch(prepared):
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, Progress):
                losses[index].append(event.losses["total"])
            if isinstance(event, Result):
                batched[index] = event.image
        sync()
        batch_s = time.perf_counter() - start
        solo_losses = [[e.losses["total"] for e in events if isinstance(e, Progress)]
                       for events in runs]  # fmt: skip
        apart = [_first_apart(solo, mine) for solo, mine in zip(solo_losses, losses)]
        first_apart = min((n for n in apart if n is not None), default=None)
        mean, worst = _pixels_apart(alone, batched)
        with other_kernels(engine.device):
            again = [list(engine.run(c, [style], options))[-1].image for c in contents]
        floor_mean, floor_worst = _pixels_apart(alone, again)
        style_alone, style_batch = [], []
        for c, a, b in zip(contents, alone, batched):
            measure = Yardstick(c, style, a.shape[:2], engine.net)
            style_alone.append(measure(a)[1])
            style_batch.append(measure(b)[1])
        print(f"{optimizer:9} {alone_s:8.2f} {batch_s:8.2f} {batch_s / alone_s:6.2f} "
              f"{mean:8.2f} {worst:6d} {first_apart or '-':>8} "
              f"{np.mean(style_alone):11.3e} {np.mean(style_batch):11.3e} "
              f"{floor_mean:9.2f} {floor_worst:8d}")  # fmt: skip


if __name__ == "__main__":
    main()
