"""What the gRPC path costs: the same job in-process on the engine and through the server.

    python benchmarks/server_overhead.py [--device cpu|cuda] [--size 128] [--iterations 30]

Prints one table: total time in-process vs through a server on 127.0.0.1 (goal: within 3%),
time from request to the first progress event with a warm model (goal: under 50 ms plus one
iteration), and the second client's speed-up from the style-target (Gram) cache.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from impasto import samples
from impasto.client import Client, Progress
from impasto_server.app import Server, ServerConfig
from impasto_server.engine import Engine, StyleOptions
from impasto_server.engine import Progress as EngineProgress


def in_process(engine: Engine, content, style, options) -> tuple[float, float, float]:
    """(total seconds, seconds to the first progress, seconds of one iteration)."""
    start = time.perf_counter()
    first = None
    events = 0
    for event in engine.run(content, [style], options):
        if isinstance(event, EngineProgress):
            events += 1
            if first is None:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    return total, first or total, total / max(1, events)


def through_server(client: Client, content, style, options) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    job = client.stylize(content, [style], **{k: v for k, v in options.to_dict().items()
                                               if k not in ("preset",)})  # fmt: skip
    for event in job:
        if isinstance(event, Progress) and first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    return total, first or total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    engine = Engine(device=args.device)
    content = samples.content()
    style = samples.style(256)
    options = StyleOptions.from_preset(
        "default", size=args.size, iterations=args.iterations, num_scales=1, seed=0,
        precision=engine.default_precision,
    )  # fmt: skip
    server = Server(ServerConfig(host="127.0.0.1", port=0), engine=engine)
    server.start()
    server.load()
    try:
        with Client(server.address) as client:
            in_process(engine, content, style, options)  # warm-up: autotune, caches
            through_server(client, content, style, options)
            local, remote, first_local, first_remote, one_iteration = [], [], [], [], []
            for _ in range(args.repeats):  # interleaved, so drift hits both sides alike
                total, first, iteration = in_process(engine, content, style, options)
                local.append(total)
                first_local.append(first)
                one_iteration.append(iteration)
                total, first = through_server(client, content, style, options)
                remote.append(total)
                first_remote.append(first)
            # Cache: a style no run has seen yet, first by one client, then by another.
            fresh = samples.style(256, seed=int(time.time()) % 100_000)
            with Client(server.address) as a, Client(server.address) as b:
                cold, _ = through_server(a, content, fresh, options)
                warm, _ = through_server(b, content, fresh, options)
            stats = engine.cache_stats()
    finally:
        server.shutdown(grace=0)

    med = statistics.median
    ratio = med(remote) / med(local)
    latency_ms = med(first_remote) * 1e3
    iteration_ms = med(one_iteration) * 1e3
    device = engine.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(engine.device)})"
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} {platform.system()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, device {device}"
    )
    print(
        f"job: {args.size} px long side, {args.iterations} L-BFGS iterations, single scale, "
        f"median of {args.repeats}"
    )
    print()
    print(f"| {'measure':<44} | {'value':>12} | {'goal':>18} |")
    print(f"|{'-' * 46}|{'-' * 14}|{'-' * 20}|")
    rows = [
        ("in-process total (s)", f"{med(local):.3f}", ""),
        ("through gRPC on loopback total (s)", f"{med(remote):.3f}", ""),
        ("gRPC / in-process", f"{ratio:.3f}", "<= 1.03"),
        ("request -> first progress, gRPC (ms)", f"{latency_ms:.1f}",
         f"< {50 + iteration_ms:.0f} (50+1 it)"),
        ("start -> first progress, in-process (ms)", f"{med(first_local) * 1e3:.1f}", ""),
        ("first-progress overhead of gRPC (ms)",
         f"{(med(first_remote) - med(first_local)) * 1e3:.1f}", "< 50"),
        ("one iteration (ms)", f"{iteration_ms:.1f}", ""),
        ("first client, new style (s)", f"{cold:.3f}", ""),
        ("second client, same style (s)", f"{warm:.3f}", ""),
        ("cache speed-up (first / second)", f"{cold / warm:.3f}", "> 1"),
        ("gram cache hits / misses", f"{stats.get('hits')} / {stats.get('misses')}", ""),
    ]  # fmt: skip
    for name, value, goal in rows:
        print(f"| {name:<44} | {value:>12} | {goal:>18} |")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
