"""Host work per iteration: the operations a pass dispatches and ms per iteration where the host,
not the arithmetic, sets the pace.

    python benchmarks/host_overhead.py [--device cpu|cuda] [--size 32] [--batch 1 4 16]
                                       [--optimizers lbfgs adam] [--repeats 3]

On an H200 at 512 px an iteration keeps the GPU busy for about a third of its time (gpu.py's
profile row): the rest is Python and the dispatcher launching some 300 kernels. Every
dispatched operation costs the host time; those that are neither views (which alias their
input) nor allocations ("kernels" below) are one kernel launch or more each on a GPU, so the
counts are a device-independent measure of that cost; ms per iteration at a tiny size (on any device) is its time. Prints, per
precision the device supports and per optimizer:

- one job with the network in bfloat16 through ``torch.autocast`` (how the engine ran it
  before: every weight cast again on every pass) against the engine's network (weights cast
  once);
- batches of N same-shaped jobs (Engine.run_batch): operations per iteration per job, which
  is what batching does not share.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from impasto import samples
from impasto_server.engine import Engine, Progress, StyleOptions
from machine import describe  # beside this script
from torch.utils._python_dispatch import TorchDispatchMode

# Operations that only allocate memory (from the caching allocator on a GPU): no kernel.
ALLOCATIONS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})


class Ops(TorchDispatchMode):
    """Counts dispatched operations while ``on``, and apart those that compute (not views,
    which alias their input, nor allocations: neither launches anything on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.computing = 0
        self.on = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on:
            self.count += 1
            self.computing += not (func.is_view or func.overloadpacket.__name__ in ALLOCATIONS)
        return func(*args, **(kwargs or {}))


class Autocast(torch.nn.Module):
    """The engine's network called as before: float32 weights under torch.autocast."""

    def __init__(self, net: torch.nn.Module, device: str) -> None:
        super().__init__()
        self.net, self.device_type = net, device.split(":")[0]

    def forward(self, pixels, layers, pooling="max", dtype=None):
        if dtype in (None, torch.float32):
            return self.net(pixels, layers, pooling)
        with torch.autocast(self.device_type, dtype=dtype):
            return self.net(pixels, layers, pooling)


def measure(engine: Engine, jobs: int, size: int, precision: str, optimizer: str,
            warmup: int = 5, timed: int = 20) -> tuple[float, float, float]:  # fmt: skip
    """(operations, of them kernels, per iteration per job; ms per iteration) for ``jobs``
    run as one batch."""
    content, style = samples.content(), samples.style(size=size)
    options = StyleOptions.from_preset(
        "default", size=size, iterations=warmup + timed, num_scales=1, precision=precision,
        optimizer=optimizer, seed=0,
    )  # fmt: skip
    runs = [engine.prepare(content, [style], options) for _ in range(jobs)]
    ops, stamps = Ops(), []
    with ops:
        for index, event in engine.run_batch(runs):
            if index == jobs - 1 and isinstance(event, Progress):
                if engine.device.startswith("cuda"):
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())
                ops.on = warmup <= len(stamps) < warmup + timed
    ms = float(np.median(np.diff(stamps[warmup - 1 :]))) * 1000.0
    return ops.count / timed / jobs, ops.computing / timed / jobs, ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--optimizers", nargs="+", default=["lbfgs", "adam"])
    p.add_argument("--repeats", type=int, default=3, help="rounds; the medians are printed")
    args = p.parse_args()
    # Each iteration's Progress after its own step: an overlapped Adam iteration (Engine.overlap)
    # reports while the next pass runs, which would shift the counting window by half an
    # iteration (the same operations, in another order).
    engine = Engine(device=args.device, overlap=False)
    print(f"device: {describe(engine.device)}; {args.size} px, default preset")
    print(f"{'precision':>9} {'optimizer':>9} {'network':>22} {'jobs':>4} "
          f"{'ops/iter/job':>12} {'kernels':>9} {'ms/iter':>8}")  # fmt: skip
    plain = engine.net
    for precision in engine.supported_precisions:
        if precision == "float16":
            continue
        for optimizer in args.optimizers:
            configs = [("weights cast once", jobs) for jobs in args.batch]
            if precision != "float32":
                configs.insert(0, ("autocast (as before)", 1))
            # Each configuration once per round, so the machine's drift touches all alike.
            runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
            for _ in range(args.repeats):
                for network, jobs in configs:
                    if network.startswith("autocast"):
                        engine.net = Autocast(plain, engine.device)
                    try:
                        measured = measure(engine, jobs, args.size, precision, optimizer)
                    finally:
                        engine.net = plain
                    runs.setdefault((network, jobs), []).append(measured)
            for (network, jobs), measured in runs.items():
                ops, computing, ms = (statistics.median(column) for column in zip(*measured))
                print(f"{precision:>9} {optimizer:>9} {network:>22} {jobs:>4} "
                      f"{ops:>12.1f} {computing:>9.1f} {ms:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
