"""One L-BFGS step, torch.optim.LBFGS against impasto's (engine/lbfgs.py), on an image-sized
vector with a full history: milliseconds per step and host reads (device synchronisations on a
GPU) per step. The same steps either way (tests/engine/test_lbfgs.py checks it to 1e-12).

    .venv/bin/python benchmarks/lbfgs_step.py                    # 256/512/1024 px, history 10/100
    .venv/bin/python benchmarks/lbfgs_step.py --sizes 512 --history 37 --device cuda

The gradient is that of a fixed random diagonal quadratic, computed by hand, so the time is the
optimiser's alone. impasto's time includes reading the new pair's curvature back, as the
engine does (with the loss terms, in the read each pass makes anyway).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
from impasto_server.engine.host_reads import HostReads
from impasto_server.engine.lbfgs import LBFGS
from machine import describe  # beside this script


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    kind: str, side: int, history: int, device: str, timed: int = 10
) -> tuple[float, float]:
    """(ms per step, host reads per step) after ``history + 1`` steps have filled the history."""
    g = torch.Generator(device=device).manual_seed(0)
    shape = (1, 3, side, side)
    # Curvatures from 1e-6 to 1: ill-conditioned enough that the run is far from converged
    # when timed, so every pair is stored (as in a style transfer run).
    curvature = 10.0 ** (-6.0 * torch.rand(shape, generator=g, device=device))
    x = (torch.rand(shape, generator=g, device=device) * 255).requires_grad_(True)

    def gradient() -> torch.Tensor:
        with torch.no_grad():
            x.grad = curvature * (x - 127.5)
            return (0.5 * (x.grad * (x - 127.5)).sum()).detach()

    if kind == "torch":
        optimiser = torch.optim.LBFGS(
            [x], max_iter=1, history_size=history, tolerance_grad=-1, tolerance_change=-1
        )

        def step() -> None:
            loss = gradient()
            optimiser.step(lambda: loss)
    else:
        ours = LBFGS(x, history)

        def step() -> None:
            gradient()
            pending = ours.curvature()
            ours.step(None if pending is None else pending.tolist())

    for _ in range(history + 2):
        step()
    times, reads = [], HostReads()
    for _ in range(timed):
        _sync(device)
        start = time.perf_counter()
        with reads:
            step()
        _sync(device)
        times.append(time.perf_counter() - start)
    stored = len(optimiser.state[x]["old_dirs"]) if kind == "torch" else ours.stored
    if stored != history:
        raise RuntimeError(f"{kind}: {stored} pairs stored of {history}: not a full history")
    return statistics.median(times) * 1000.0, reads.count / timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--history", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(describe(args.device))
    print(f"{'size':>5} {'history':>7} {'torch ms':>9} {'impasto ms':>10} {'ratio':>6} "
          f"{'torch reads':>11} {'impasto reads':>13}")  # fmt: skip
    for side in args.sizes:
        for history in args.history:
            theirs, their_reads = measure("torch", side, history, args.device)
            gc.collect()
            ours, our_reads = measure("impasto", side, history, args.device)
            gc.collect()
            print(f"{side:>5} {history:>7} {theirs:>9.2f} {ours:>10.2f} {ours / theirs:>6.2f} "
                  f"{their_reads:>11.0f} {our_reads:>13.0f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
