"""One L-BFGS step, torch.optim.LBFGS against impasto's (engine/lbfgs.py), on an image-sized
vector with a full history: milliseconds per step and host reads (device synchronisations on a
GPU) per step. The same steps either way (tests/engine/test_lbfgs.py checks it to 1e-12).
impasto's step is timed in both its forms: the default, and the capturable one (every value on
the device, the whole history masked); on a GPU also the capturable step recorded as a CUDA
graph and replayed (with the gradient's few kernels), as Engine(capturable_lbfgs=True) runs it.
Last, the operations that compute (kernels on a GPU, host_overhead.py's count) in one step of
each form.

    .venv/bin/python benchmarks/lbfgs_step.py                    # 256/512/1024 px, history 10/100
    .venv/bin/python benchmarks/lbfgs_step.py --sizes 512 --history 37 --device cuda

The gradient is that of a fixed random diagonal quadratic, computed by hand, so the time is the
optimiser's alone. impasto's time includes reading the new pair's curvature back, as the
engine does (with the loss terms, in the read each pass makes anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time

import torch
from host_overhead import Ops  # beside this script
from impasto_server.engine.host_reads import HostReads
from impasto_server.engine.lbfgs import LBFGS
from machine import describe  # beside this script


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    kind: str, side: int, history: int, device: str, timed: int = 10, ops: Ops | None = None
) -> tuple[float, float]:
    """(ms per step, host reads per step) after ``history + 1`` steps have filled the history;
    ``ops``, where given, counts the operations of the optimiser's part of each timed step."""
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

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if kind == "torch":
        optimiser = torch.optim.LBFGS(
            [x], max_iter=1, history_size=history, tolerance_grad=-1, tolerance_change=-1
        )

        def step() -> None:
            loss = gradient()
            optimiser.step(lambda: loss)
    else:
        ours = LBFGS(x, history, capturable=kind != "impasto")

        def step() -> None:
            gradient()
            if ops is not None:
                ops.on = True
            pending = ours.curvature()  # None where capturable
            ours.step(None if pending is None else pending.tolist())
            if ops is not None:
                ops.on = False

    for _ in range(history + 2):
        step()
    if ops is not None:
        ops.count = ops.computing = 0
    if kind == "captured":
        step = _recorded(step, device)
    times, reads = [], HostReads()
    for _ in range(timed):
        _sync(device)
        start = time.perf_counter()
        with reads, ops or contextlib.nullcontext():
            step()
        _sync(device)
        times.append(time.perf_counter() - start)
    stored = len(optimiser.state[x]["old_dirs"]) if kind == "torch" else ours.stored
    if stored != history:
        raise RuntimeError(f"{kind}: {stored} pairs stored of {history}: not a full history")
    return statistics.median(times) * 1000.0, reads.count / timed


KINDS = ("torch", "impasto", "capturable", "captured")


def _recorded(step, device: str):
    """``step`` recorded as a CUDA graph (after one run on the side stream the recording uses,
    as torch's documentation asks): a function that replays it."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        step()
    return graph.replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--history", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(describe(args.device))
    cuda = args.device.startswith("cuda")
    extra = ["capturable", "captured"] if cuda else ["capturable"]
    print(f"{'size':>5} {'history':>7} {'torch ms':>9} {'impasto ms':>10} {'ratio':>6} "
          f"{'torch reads':>11} {'impasto reads':>13}"
          + "".join(f" {k + ' ms':>13}" for k in extra))  # fmt: skip
    for side in args.sizes:
        for history in args.history:
            theirs, their_reads = measure("torch", side, history, args.device)
            gc.collect()
            ours, our_reads = measure("impasto", side, history, args.device)
            gc.collect()
            others = []
            for kind in extra:
                others.append(measure(kind, side, history, args.device)[0])
                gc.collect()
            print(f"{side:>5} {history:>7} {theirs:>9.2f} {ours:>10.2f} {ours / theirs:>6.2f} "
                  f"{their_reads:>11.0f} {our_reads:>13.0f}"
                  + "".join(f" {ms:>13.2f}" for ms in others), flush=True)  # fmt: skip
    counts = []
    for kind in ("impasto", "capturable"):
        ops = Ops()
        measure(kind, 32, 10, args.device, timed=1, ops=ops)
        counts.append(f"{kind} {ops.computing}")
    print("operations that compute, one step: " + ", ".join(counts))


if __name__ == "__main__":
    main()
