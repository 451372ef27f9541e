"""Every GPU measurement in one run, printed as one table (see docs/benchmarks.md).

    python benchmarks/gpu.py                 # on a CUDA machine: the goals' run, a few minutes
    python benchmarks/gpu.py --only all      # that and the parts that explain it (marked *)
    python benchmarks/gpu.py --toy --only all           # tiny sizes on the CPU (the test suite)
    python benchmarks/gpu.py --only largest,compile     # some parts (names below), e.g. a rerun

0. (checks) Whether the style loss takes the float32 Grams of bfloat16 features without a
   float32 copy of them (torch's out_dtype products, CUDA only), and how far its loss and
   gradient are from float64's: the relative error of each, against that of float32 features.
1. (iteration) ms per iteration (one forward and input-gradient backward through VGG19 to
   conv5_1, the paper's losses, one L-BFGS step) at 512 and 1024 px in float32, TF32 and
   bfloat16 (Gram matrices and losses always float32), timed after warm-up; every
   iteration ends in a host sync (the loss is read), so wall time between iterations is device
   time.
2. (graphs) The engine's pass replayed as a CUDA graph (Engine.cuda_graphs, the default on a
   GPU) against eager: ms per iteration in bfloat16 at 512 px (L-BFGS and Adam) and 1024 px,
   and how far the two runs' last losses are apart; a batch of four 256 px Adam runs as one
   graph against eager (ms, and the largest pixel difference of the results); the server part
   adds a 16-client row with graphs the other way from the default. The L-BFGS rows have a
   third time: the L-BFGS step recorded in the pass's graph too (Engine(capturable_lbfgs=True),
   off by default until this row shows it pays). Every other part runs the
   engine's default; the table says which it was, and how many passes could not be recorded.
3. (lbfgs *) One L-BFGS step at 512 px with a full history of 100 pairs, torch.optim.LBFGS against
   impasto's (benchmarks/lbfgs_step.py): ms and host reads (synchronisations) per step; and
   impasto's capturable step, eager and replayed as a CUDA graph.
4. (profile *) Kernels and GPU-busy time per iteration at 512 px, bfloat16 (torch.profiler),
   eager and with CUDA graphs; the busiest kernels to $OUT/profile.txt and profile-graphs.txt.
5. (largest) The largest square image one job can stylize (up to the engine's limit, 8192 px),
   found by doubling from 4096 px (the goal on an 80 GB card) then bisecting with the engine's
   memory plan, then confirmed by the real optimizer (L-BFGS with up to 100 pairs, 2.4 KB a
   pixel, fewer where the plan cuts them to fit) at that side; should that run fail, by real
   runs below it. The pairs kept at that size, the peak device memory against the plan's
   estimate, per megapixel, any job the plan accepted that then failed, and each side tried
   with the seconds it took.
6. (server) Throughput of the real gRPC server on loopback with 1, 4 and 16 concurrent clients
   (each a process of its own, benchmarks/throughput_client.py) sending six 256 px Adam jobs
   each: jobs per minute, once with each job alone (as many running at once as there are
   clients) and once with same-shaped jobs batched up to the GPU default of 8; at 16 clients
   also batched up to 16, and up to 8 with two batches at once (--max-running 2); then 16
   clients' default-preset L-BFGS jobs alone and batched with --batch-lbfgs (and with each
   step outside the pass's graph).
7. (server-more *) The server's rows that say why: one client again (each ratio's base), 16
   batched clients with every iteration's progress event (--progress-rate 0), without
   overlapped Adam iterations (and one client so), without jobs prepared ahead, with 2048 px
   photographs (prepared ahead by one thread, by four, and not ahead), with each job a new
   2048 px style, with CUDA graphs the other way, with recordings that keep the allocator's
   cache the other way (1 and 16 clients), and once with the job worker's parts timed.
8. (server-compiled *) One client alone and 16 batched with the network's passes compiled in
   the background (the server's --compile), after a warm-up that compiles every pass shape
   they meet: jobs per minute, and the 16 clients' ratio to the one compiled client's, also
   with two batches at once (--max-running 2); and the job worker's parts timed (one batch at
   a time).
9. (server-shapes *) What compiling costs a server that meets new shapes: 4 clients' batched
   jobs of 256, 384 and 512 px in turn, jobs per minute without compiling, with the network
   compiled from cold, then again once the shapes met are compiled (the compiles awaited).
10. (server-ratio *) The goal's ratio with its noise: a batch of one and of eight of the server
   rows' jobs through the engine alone (wall and GPU kernel ms); then one client alone and 16
   batched (one batch at a time, two and three at once, staggered) in turn, twice, one client
   sending 24 jobs; then one client, one batch and two at once with the interpreter's switch
   interval at 0.5 ms (Python's default: 5 ms); then the job worker's parts timed.
11. (compile) torch.compile of the feature network (default and reduce-overhead modes), and a
   CUDA graph of one forward and backward pass: ms per iteration (or per pass) with and without.
12. (autotune *) The default 512 px job on new shapes with cuDNN autotuning on and off.

The parts run in this order, so a run cut short by its time limit loses the least; a part that
fails is a row saying so (its traceback on stderr), the others still run, and the exit status
is 1. The last row gives the seconds each part took. By default the run is the measurements the
goals name (the goal: that run in 5 minutes on one H100); the parts marked * explain them and
run when named (``--only all``: every part).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import lbfgs_step  # beside this script
import numpy as np
import torch
from impasto import samples
from impasto_server.engine import (
    Cancelled,
    Engine,
    InsufficientMemory,
    Progress,
    Result,
    StyleOptions,
)
from machine import device_name  # beside this script


@contextlib.contextmanager
def tf32(enabled: bool):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def ms_per_iteration(engine: Engine, content, style, size: int, precision: str,
                     iterations: int, warmup: int) -> float:  # fmt: skip
    return first_and_ms(engine, content, style, size, precision, iterations, warmup)[1]


def first_and_ms(engine: Engine, content, style, size: int, precision: str,
                 iterations: int, warmup: int) -> tuple[float, float]:  # fmt: skip
    """Seconds from the job's start to its first iteration, and ms per iteration after the
    warm-up (the median), of a one-scale default job."""
    options = StyleOptions.from_preset(
        "default", size=size, iterations=warmup + iterations, num_scales=1, precision=precision,
        seed=0,
    )  # fmt: skip
    stamps = [
        ev.elapsed for ev in engine.run(content, [style], options) if isinstance(ev, Progress)
    ]
    timed = np.diff(stamps[warmup - 1 :])
    return float(stamps[0]), float(np.median(timed) * 1000.0)


def largest_square(engine: Engine, content, style, start: int, limit: int, precision: str,
                   seconds: float = 90.0, step: int = 64):  # fmt: skip
    """The largest side whose job the engine's memory plan accepts (which may keep fewer L-BFGS
    pairs than usual), found by doubling from ``start`` then bisecting to ``step`` px, cheaply:
    the plan alone (two tiny probe runs); then the real optimizer at that side: the job's first
    five iterations. Should they fail (a plan miss when out of memory), the search goes on
    below that side with real runs, from ``start`` (halving while they fail) then bisecting for
    up to ``seconds`` (the side found is then a lower bound, more than ``step`` px from the
    first side that failed).
    Returns (side, what was measured at that side, plan misses, other errors as (side,
    message), the first side that failed or None where the search reached ``limit``, each side
    tried with how it ended and how long it took)."""
    cuda = engine.device.startswith("cuda")
    misses: list[int] = []
    errors: list[tuple[int, str]] = []
    tried: list[str] = []

    def job(side: int):
        square = np.ascontiguousarray(np.resize(content, (side, side, 3)))
        # A stage of 101 iterations: L-BFGS's full history of 100 pairs (allocated when the
        # stage starts) unless memory is short, as a long job's last stage has; stopped after
        # its fifth iteration.
        options = StyleOptions.from_preset(
            "default", size=side, iterations=101, num_scales=1, precision=precision, seed=0
        )
        return square, options

    plans: dict[int, object] = {}  # the plan's answer for each side asked

    def plan(side: int):
        if side not in plans:
            start = time.perf_counter()
            square, options = job(side)
            try:
                plans[side] = engine.plan_memory(square, [style], options)
                how = "accepted by the plan"
            except InsufficientMemory:
                plans[side] = None
                how = "refused by the plan"
            tried.append(f"{side} {how} ({time.perf_counter() - start:.1f} s)")
        return plans[side]

    def fits(side: int) -> dict | None:
        accepted = plan(side)
        if accepted is None:
            return None
        start = time.perf_counter()
        square, options = job(side)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if cuda else 0
        stamps: list[float] = []  # when each iteration ended
        try:
            for event in engine.run(
                square, [style], options, should_stop=lambda: len(stamps) >= 5, memory=accepted
            ):
                if isinstance(event, Progress):
                    stamps.append(time.perf_counter())
        except Cancelled:
            pass
        except torch.OutOfMemoryError:
            misses.append(side)
            tried.append(f"{side} out of memory ({time.perf_counter() - start:.1f} s)")
            return None
        except RuntimeError as exc:  # a limit other than memory (say a 32-bit index): reported
            errors.append((side, f"{exc}"[:120]))
            tried.append(f"{side} failed ({time.perf_counter() - start:.1f} s)")
            return None
        # The first iteration pays the job's setup (targets, kernels' first use); the second is
        # eager and the third records the pass as a CUDA graph (where the engine does); the
        # fourth and fifth are the iteration itself (replays, on a GPU).
        gaps = np.diff(stamps)
        early = gaps[:2].mean() if len(gaps) else float("nan")
        later = gaps[2:].mean() if len(gaps) > 2 else float("nan")
        first = stamps[0] - start if stamps else float("nan")
        tried.append(f"{side} ran ({first:.1f} s to the first iteration, {early:.2f} s each of "
                     f"the next two, then {later:.2f} s)")  # fmt: skip
        peak = torch.cuda.max_memory_allocated() - before if cuda else 0
        return {"pairs": accepted.pairs[-1], "estimate": accepted.needed, "peak": peak}

    def search(test, side: int, top: int, bad: int | None, deadline: float):
        """Doubling from ``side`` up to ``top`` (halving while it fails, where nothing has
        passed yet), then bisecting between the last side that passed ``test`` and the first
        that failed. Returns (that side, what ``test`` gave there, the failed side or None)."""
        good, best = 0, None
        while True:
            outcome = test(side)
            if outcome is None:
                bad = side
                if good or side <= step:
                    break
                side = max(step, side // 2 // 16 * 16)
                continue
            good, best = side, outcome
            if side >= top or bad is not None:
                break
            side = min(2 * side, top)
        while bad is not None and bad - good > step and time.monotonic() < deadline:
            middle = (good + bad) // 2 // 16 * 16
            outcome = test(middle)
            if outcome is not None:
                good, best = middle, outcome
            else:
                bad = middle
        return good, best, bad

    # The plan's answer first (no deadline: it takes seconds), then one real run there.
    accepted, _, refused = search(plan, min(start, limit), limit, None, float("inf"))
    if not accepted:
        return 0, None, misses, errors, refused, tried
    measured = fits(accepted)
    if measured is not None:
        return accepted, measured, misses, errors, refused, tried
    top = accepted - 16  # it failed: the real runs' search stays below it
    deadline = time.monotonic() + seconds
    good, best, bad = search(fits, min(start, top), top, accepted, deadline)
    return good, best, misses, errors, bad, tried


def server_throughput(engine: Engine, clients: int, jobs_each: int, size: int | str,
                      iterations: int, batch: int, optimizer: str = "adam",
                      stats: dict | None = None, input_side: int = 512, style_side: int = 0,
                      **config: Any) -> tuple[float, float]:  # fmt: skip
    """Jobs per minute through the real server, and the mean batch size. batch 1: every job
    alone, ``clients`` at once; otherwise one slot runs batches of up to ``batch`` jobs. Each
    client is a process of its own (throughput_client.py); all start together once connected,
    and the row lasts from the first job sent to the last result in. Each client sends the
    sample photograph at ``input_side`` pixels a side (and with ``style_side``, a style of its
    own each job, drawn at that side; throughput_client.py).
    ``config``: more of the server's settings (ServerConfig's fields); ``stats``, if given,
    gets the row's seconds and the CPU seconds the server's process (this one) and its clients
    used."""
    import json
    import subprocess

    from impasto_server.app import Server, ServerConfig

    # Each job alone: as many at once as there are clients; batched: one batch at a time (the
    # server's default) unless the row says otherwise.
    running = config.pop("max_running", clients if batch == 1 else 1)
    server = Server(
        ServerConfig(host="127.0.0.1", port=0, max_running=running,
                     max_batch=batch, batch_lbfgs=optimizer == "lbfgs",
                     queue_size=4 * clients * jobs_each, max_jobs_per_client=jobs_each,
                     grace_seconds=0.0, **config),
        engine=engine,
    )  # fmt: skip
    server.start()
    server.load()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "throughput_client.py")
    command = [sys.executable, script, server.address, str(jobs_each), str(size), str(iterations),
               optimizer, str(input_side), str(style_side)]  # fmt: skip
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    procs = [subprocess.Popen(command, text=True, **pipes) for _ in range(clients)]
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a client did not start: {proc.communicate()[1][-500:]}")
        cpu = time.process_time()  # this process: the server's
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate() for proc in procs]
        cpu = time.process_time() - cpu
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        server.shutdown(grace=0.0)
    failed = [err for proc, (_, err) in zip(procs, outputs, strict=True) if proc.returncode]
    if failed:
        raise RuntimeError(f"{len(failed)} clients failed: {failed[0][-500:]}")
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    # From the first job sent to the last result in, as the clients saw them: not the
    # processes' exits (a tenth of a second or so each, half a row of one client's six jobs).
    seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    batch_sizes = [size for report in reports for size in report["batch_sizes"]]
    if stats is not None:
        stats["seconds"], stats["server_cpu_seconds"] = seconds, cpu
        stats["clients_cpu_seconds"] = sum(report["cpu_seconds"] for report in reports)
    return clients * jobs_each / seconds * 60.0, float(np.mean(batch_sizes))


def graphed_ms(engine: Engine, size: int, precision: str, passes: int) -> tuple[float, float]:
    """ms per forward+backward pass of the network and losses, eager and as a CUDA graph."""
    from impasto_server.engine.losses import gram

    layers = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv4_2", "conv5_1")
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    x = torch.rand(1, 3, size, size, device=engine.device) * 255
    x = x.contiguous(memory_format=torch.channels_last)

    class Objective(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            feats = engine.net(image, layers, "max", dtype)
            return sum(gram(f).square().sum() for f in feats.values())

    objective = Objective()

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(passes):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / passes * 1000.0

    image = x.clone().requires_grad_(True)

    def eager() -> None:
        image.grad = None
        objective(image).backward()

    eager_ms = timed(eager)
    graphed = torch.cuda.make_graphed_callables(objective, (x.clone().requires_grad_(True),))

    def replay() -> None:
        image.grad = None
        graphed(image).backward()

    return eager_ms, timed(replay)


def compiled_runs(engine: Engine, content, style, sizes: tuple[int, ...], iterations: int,
                  warmup: int, mode: str | None, dynamic: bool) -> str:  # fmt: skip
    """The network under torch.compile (a fresh compiler cache), one bfloat16 job at each side
    in turn: seconds to its first iteration (compiling, where the shape is new to it) and ms
    per iteration."""
    plain = engine.net
    try:
        torch._dynamo.reset()
        engine.net = torch.compile(plain, dynamic=dynamic, mode=mode)
        runs = [
            first_and_ms(engine, content, style, side, "bfloat16", iterations, warmup)
            for side in sizes
        ]  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a missing compiler is a result, not a crash
        print(f"torch.compile failed: {exc!r}"[:200])
        return "failed"
    finally:
        engine.net = plain
        torch._dynamo.reset()
    return runs_text(sizes, runs)


def runs_text(sizes: tuple[int, ...], runs: list[tuple[float, float]]) -> str:
    return "; ".join(
        f"{side} px: first iteration at {first:.1f} s, {ms:.2f} ms/iter"
        for side, (first, ms) in zip(sizes, runs, strict=True)
    )  # fmt: skip


def autotune_part(engine: Engine, rows: Rows, content, style) -> None:
    """cuDNN's autotuner (torch.backends.cudnn.benchmark) against cuDNN's heuristics (the
    engine's default since this row's first GPU run), for the default preset's 512 px job on
    shapes this process has not met yet (each flag its own width), run twice: a server meets
    new shapes with every new image size, stage and batch size, and would pay the autotuning
    on the first job of each."""
    saved = torch.backends.cudnn.benchmark
    label = "default job 512 px, new shapes: autotuned / heuristics"
    with rows.section(label):
        seconds: dict[bool, list[float]] = {}
        for flag, width in ((True, 440), (False, 456)):
            torch.backends.cudnn.benchmark = flag
            image = np.ascontiguousarray(np.resize(content, (512, width, 3)))
            options = StyleOptions.from_preset("default", size=512, seed=0)
            for _ in range(2):
                start = time.perf_counter()
                for _event in engine.run(image, [style], options):
                    pass
                seconds.setdefault(flag, []).append(time.perf_counter() - start)
        on, off = seconds[True], seconds[False]
        text = f"first {on[0]:.2f} / {off[0]:.2f} s, again {on[1]:.2f} / {off[1]:.2f} s"
        rows.append((label, f"{text} ({options.iterations} iterations)"))
    torch.backends.cudnn.benchmark = saved


def profile_part(engine: Engine, rows: Rows, content, style) -> None:
    """Kernels and GPU-busy time per iteration at 512 px in bfloat16 (torch.profiler): how much
    of an iteration the device works, against the host launching its kernels; eagerly, then
    with the pass replayed as a CUDA graph. The tables of the busiest kernels go to
    $OUT/profile.txt (and profile-graphs.txt) where OUT is set."""
    from torch.profiler import ProfilerActivity, profile

    for graphed in (False, True):
        how = ", CUDA graphs" if graphed else ""
        label = f"profile 512 px bfloat16{how}, per iteration"
        with rows.section(label):
            iterations = 30
            options = StyleOptions.from_preset(
                "default", size=512, iterations=iterations, num_scales=1,
                precision="bfloat16", seed=0,
            )  # fmt: skip
            with graph_failures(), graphs_set(engine, graphed, graphed):
                for _event in engine.run(content, [style], options):  # warm
                    pass
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    start = time.perf_counter()
                    for _event in engine.run(content, [style], options):
                        pass
                    wall = time.perf_counter() - start
            device = torch.autograd.DeviceType.CUDA
            kernels = [e for e in prof.events() if e.device_type == device]
            busy = sum(e.time_range.elapsed_us() for e in kernels) / 1000.0
            per = f"{busy / iterations:.2f} ms of {wall * 1000 / iterations:.2f} ms"
            text = f"{len(kernels) / iterations:.0f} kernels, GPU busy {per}"
            rows.append((label, f"{text} (profiled; the job's setup included)"))
            out = os.environ.get("OUT")
            if out:
                averages = prof.key_averages()
                name = "profile-graphs.txt" if graphed else "profile.txt"
                with open(os.path.join(out, name), "w") as f:
                    for key in ("self_device_time_total", "self_cpu_time_total"):
                        try:
                            f.write(averages.table(sort_by=key, row_limit=30) + "\n")
                        except Exception as exc:  # noqa: BLE001 - a renamed key: the other
                            f.write(f"{key}: {exc!r}\n")


@contextlib.contextmanager
def graphs_set(engine: Engine, on: bool, steps: bool = False):
    """The engine's passes replayed as CUDA graphs (or not) inside the block, with the L-BFGS
    steps recorded in them where ``steps``, and the engine's own settings (its defaults) again
    after it, whatever happens."""
    saved = engine.cuda_graphs, engine.capturable_lbfgs
    engine.cuda_graphs, engine.capturable_lbfgs = on, steps
    try:
        yield
    finally:
        engine.cuda_graphs, engine.capturable_lbfgs = saved


@contextlib.contextmanager
def engine_set(engine: Engine, name: str, value: Any):
    """The engine's setting ``name`` set to ``value`` inside the block, its own again after."""
    saved = getattr(engine, name)
    setattr(engine, name, value)
    try:
        yield
    finally:
        setattr(engine, name, saved)


class GraphFailures(logging.Handler):
    """Keeps the engine's warnings that a pass could not be recorded as a CUDA graph (the pass
    then runs eagerly) while it is added to the engine's logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "CUDA graph" in record.getMessage():
            self.seen.append(record)


@contextlib.contextmanager
def graph_failures():
    """Raises after the block if a pass in it could not be recorded as a CUDA graph (a row must
    not pass an eager time off as a graph's), so the block holds the measurement and the row is
    written after it."""
    handler, logger = GraphFailures(), logging.getLogger("impasto_server.engine")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    seen = handler.seen
    if seen:
        exc_info = seen[0].exc_info
        cause = exc_info[1] if exc_info else None
        raise RuntimeError(f"{len(seen)} pass(es) not recorded as CUDA graphs: {cause!r}")


def default_last_stage(engine: Engine, content, style, size: int) -> int:
    """Iterations of the last, full-size stage of the server's default job at ``size`` (300
    iterations in 4 scales: 58 at 512 px)."""
    options = StyleOptions.from_preset("default", size=size, precision="bfloat16")
    return engine.prepare(content, [style], options).per_stage[-1]


def graphs_part(engine: Engine, rows: Rows, content, style, iterations: int, warmup: int,
                sizes: tuple[int, int, int] = (512, 1024, 256),
                lbfgs_iterations: Callable[[int], int | None] | None = None) -> None:  # fmt: skip
    """The engine's pass replayed as a CUDA graph (Engine.cuda_graphs) against eager, in
    bfloat16: ms per iteration at 512 and 1024 px (L-BFGS, the default preset's) and 512 px
    (Adam), medians of 3 alternating runs, and how far the graphed run's last total loss is
    from the eager run's (the same job: the same kernels, replayed). For L-BFGS also with its
    steps in the graph (Engine.capturable_lbfgs: the same steps to rounding, so its last loss
    is near, not equal). ``sizes``: the first two rows', the last's, the batch's.

    ``lbfgs_iterations(size)``: how long the L-BFGS rows' one stage is (None, or not given:
    warmup + iterations); asked inside the row, so that its failure is the row's. A stage of n
    iterations keeps n - 1 pairs, filled as it goes: the default step reads the pairs stored so
    far, the capturable one all n - 1 from the first step, so the comparison is fair only at
    the length of a real stage (``default_last_stage``)."""
    small, large, batch = sizes
    for size, optimizer in ((small, "lbfgs"), (small, "adam"), (large, "lbfgs")):
        total = warmup + iterations
        # (graphs, the L-BFGS step in them)
        modes = [(False, False), (True, False)] + ([(True, True)] if optimizer == "lbfgs" else [])
        label = f"ms/iteration {size} px bfloat16 {optimizer}, eager / CUDA graphs" + (
            " / with the step" if len(modes) == 3 else "")  # fmt: skip
        with rows.section(label):
            if optimizer == "lbfgs" and lbfgs_iterations is not None:
                total = lbfgs_iterations(size) or total
            options = StyleOptions.from_preset(
                "default", size=size, iterations=total, num_scales=1,
                precision="bfloat16", optimizer=optimizer, seed=0,
            )  # fmt: skip
            times: dict[tuple[bool, bool], list[float]] = {mode: [] for mode in modes}
            last: dict[tuple[bool, bool], float] = {}
            # The step in the graph is new: where it cannot be recorded, its column says so
            # and the other two still count (any other pass not recorded fails the row).
            step_failed = ""
            for _ in range(3):
                for mode in modes:
                    if mode[1] and step_failed:
                        continue
                    try:
                        with graph_failures(), graphs_set(engine, *mode):
                            events = [e for e in engine.run(content, [style], options)
                                      if isinstance(e, Progress)]  # fmt: skip
                    except RuntimeError as exc:
                        if not mode[1] or "CUDA graph" not in str(exc):
                            raise
                        step_failed = f"with the step: {exc}"
                        continue
                    stamps = [e.elapsed for e in events]
                    median = float(np.median(np.diff(stamps[warmup - 1 :])))
                    times[mode].append(median * 1e3)
                    last[mode] = events[-1].losses["total"]
            done = [mode for mode in modes if times[mode]]
            eager, *graphed = (statistics.median(times[mode]) for mode in done)
            gaps = [abs(last[mode] - last[done[0]]) / abs(last[done[0]]) for mode in done[1:]]
            apart = "last loss apart by " + " / ".join(f"{gap:.1e}" for gap in gaps) + " of it"
            ms = " / ".join(
                [f"{t:.2f}" for t in (eager, *graphed)] + ["-"] * (len(modes) - len(done))
            )
            ratios = " / ".join(f"{eager / t:.2f}x" for t in graphed)
            failed = f"; {step_failed}" if step_failed else ""
            stage = f"; one stage of {total} iterations" if optimizer == "lbfgs" else ""
            rows.append((label, f"{ms} ({ratios}); {apart}{stage}{failed}"))
    graphed_batch(engine, rows, content, style, iterations, warmup, size=batch)


def graphed_batch(engine: Engine, rows: Rows, content, style, iterations: int, warmup: int,
                  size: int = 256, precision: str = "bfloat16") -> None:  # fmt: skip
    """A batch as one graph: four Adam runs with their own weights and seeds, ms per iteration
    eager and graphed, and how far the graphed results are from the eager ones."""
    label = f"batch of 4 x {size} px Adam {precision}, ms/iteration eager / CUDA graphs"
    with rows.section(label):
        base = StyleOptions.from_preset(
            "default", size=size, iterations=warmup + iterations, num_scales=1,
            precision=precision, optimizer="adam",
        )  # fmt: skip
        jobs = [base.replace(seed=i, style_weight=base.style_weight * (1 + i)) for i in range(4)]
        ms: dict[bool, float] = {}
        images: dict[bool, list[np.ndarray]] = {}
        for graphed in (False, True):
            runs = [engine.prepare(content, [style], o) for o in jobs]
            stamps, results = [], []
            with graph_failures(), graphs_set(engine, graphed):
                for index, event in engine.run_batch(runs):
                    if isinstance(event, BaseException):
                        raise event
                    if index == 0 and isinstance(event, Progress):
                        stamps.append(event.elapsed)
                    if isinstance(event, Result):
                        results.append(event.image.astype(np.float32))
            ms[graphed] = float(np.median(np.diff(stamps[warmup - 1 :]))) * 1e3
            images[graphed] = results
        worst = max(float(np.abs(a - b).max()) for a, b in zip(*images.values(), strict=True))
        ratio = ms[False] / ms[True]
        apart = f"results apart by at most {worst:.0f} levels of 255"
        rows.append((label, f"{ms[False]:.2f} / {ms[True]:.2f} ({ratio:.2f}x); {apart}"))


def checks_part(device: str, rows: Rows) -> None:
    from impasto_server.engine import losses

    generator = torch.Generator().manual_seed(0)
    exact = torch.rand(2, 64, 48, 40, generator=generator, dtype=torch.float64) * 4
    targets = losses._products(torch.rand(2, 64, 8, 8, generator=generator, dtype=torch.float64))
    targets = targets / 64
    reference = exact.clone().requires_grad_(True)  # the paper's E_l in float64, by autograd
    flat = reference.flatten(2)
    grams = flat @ flat.transpose(1, 2) / flat.shape[2]
    expected = (grams - targets).square().sum(dim=(1, 2)) / (4 * 64 * 64)
    expected.sum().backward()
    expected = expected.detach()

    def error(dtype: torch.dtype) -> tuple[float, float]:
        f = exact.to(device, dtype).contiguous(memory_format=torch.channels_last)
        f.requires_grad_(True)
        loss = losses.style_layer_losses(f, targets.to(device, torch.float32))
        loss.sum().backward()
        assert f.grad is not None
        value = float(((loss.detach().double().cpu() - expected) / expected).abs().max())
        grad = f.grad.double().cpu()
        return value, float((grad - reference.grad).norm() / reference.grad.norm())

    label = "style loss of bfloat16 features"
    with rows.section(label):
        low, high = error(torch.bfloat16), error(torch.float32)
        how = losses._HALF_PRODUCTS[(torch.device(device).type, torch.bfloat16)]
        how = {"copy": "a float32 copy"}.get(how, f"{how} with out_dtype float32")
        errors = f"{low[0]:.1e} / {low[1]:.1e} (float32 features {high[0]:.1e} / {high[1]:.1e})"
        rows.append((label, f"Grams from {how}; relative error of loss / gradient {errors}"))


#: Every part, in the order they run.
PARTS = (
    "checks",
    "iteration",
    "graphs",
    "lbfgs",
    "profile",
    "largest",
    "server",
    "server-more",
    "server-compiled",
    "server-shapes",
    "server-ratio",
    "compile",
    "autotune",
)
#: The parts that explain the others: run only when named.
MORE = (
    "lbfgs", "profile", "server-more", "server-compiled", "server-shapes", "server-ratio",
    "autotune",
)  # fmt: skip


class Rows(list):
    """The table's rows; each is also printed as soon as it is measured, so a run stopped by its
    time limit still leaves what it measured in the log."""

    failed = 0

    def __init__(self) -> None:
        super().__init__()
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str):
        """Times a part of the run, for the last row: where a run's time limit goes."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def timing_row(self) -> None:
        parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.seconds.items())
        whole = time.perf_counter() - self.started
        self.append(("seconds by part", f"{parts}; in all {whole:.0f}"))

    def append(self, row: tuple[str, str]) -> None:
        super().append(row)
        print(f"[{time.strftime('%H:%M:%S')}] {row[0]}: {row[1]}", flush=True)

    @contextlib.contextmanager
    def section(self, label: str):
        """A part of the run whose failure is a row of the table (and a traceback on stderr),
        not the end of the run: a GPU machine is lent for minutes, once."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - reported, then the next part runs
            traceback.print_exc()
            self.failed += 1
            self.append((label, f"failed: {exc!r}"[:160]))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def server_part(engine: Engine, rows: Rows, toy: bool) -> None:
    """Jobs per minute with 1, 4 and 16 clients, Adam, each job alone and batched up to the
    GPU default (GPU_MAX_BATCH), and 16 clients batched up to twice that (which decides the
    default: 1.10, 1.10 and 0.95x of it in runs 6 to 8); then the default preset's L-BFGS jobs
    at 16 clients, alone and batched (--batch-lbfgs), and batched with each L-BFGS step outside
    the pass's graph (the default before run 7; with CUDA graphs only). One client's batch is a
    batch of one: not run. And 16 clients batched up to GPU_MAX_BATCH with two batches at once
    (--max-running 2: one batch's host work, its start, recording and results, beside the
    other's passes; 1.13, 0.92x one batch at a time in runs 10 and 11)."""
    from impasto_server.app import GPU_MAX_BATCH

    row, many = server_rows(engine, rows, toy)
    for clients in (2,) if toy else (4, 16):
        row(clients, 1)
        row(clients, GPU_MAX_BATCH)
    row(many, 2 * GPU_MAX_BATCH)
    row(many, GPU_MAX_BATCH, max_running=2)
    row(many, 1, "lbfgs")
    row(many, GPU_MAX_BATCH, "lbfgs")
    if engine.cuda_graphs:  # the default records the steps with the passes since run 7
        row(many, GPU_MAX_BATCH, "lbfgs", step_outside=True)


def server_more_part(engine: Engine, rows: Rows, toy: bool) -> None:
    """The server's rows that say why (all at 16 clients batched up to GPU_MAX_BATCH but where
    said): with every iteration's progress event sent (--progress-rate 0); without
    Engine.overlap, and one client so; with no jobs prepared ahead; with the content sent at
    2048 px, prepared ahead by one thread, by four and not ahead; with each job a 2048 px style
    of its own; with CUDA graphs the other way from the engine's default; with recordings that
    keep the allocator's cache the other way from the engine's default (Engine.graphs_keep_cache),
    one client and 16; and the job worker's time, part by part."""
    from impasto_server.app import GPU_MAX_BATCH

    row, many = server_rows(engine, rows, toy)
    row(many, GPU_MAX_BATCH, progress_rate=0)  # every iteration's progress event, as before
    row(1, 1, overlap=False)  # Adam's iterations one after another, as before
    row(many, GPU_MAX_BATCH, overlap=False)
    row(many, GPU_MAX_BATCH, prepare_ahead=0)  # each batch's jobs prepared as it starts
    side = 128 if toy else 2048  # a photograph as a phone takes it: more to prepare a job
    row(many, GPU_MAX_BATCH, input_side=side)
    row(many, GPU_MAX_BATCH, input_side=side, prepare_ahead=0)
    row(many, GPU_MAX_BATCH, input_side=side, prepare_threads=4)  # one by default
    row(many, GPU_MAX_BATCH, style_side=side)  # styles not yet cached, resized when prepared
    if engine.device.startswith("cuda"):
        row(many, GPU_MAX_BATCH, other_graphs=True)
        # a recording per job alone, per batch batched: torch empties the cache at each
        row(1, 1, keep_cache=not engine.graphs_keep_cache)
        row(many, GPU_MAX_BATCH, keep_cache=not engine.graphs_keep_cache)
    size, its, jobs_each = server_job(toy)
    label = f"server, {many} clients, Adam, batched (up to {GPU_MAX_BATCH}): the worker's time"
    with rows.section(label):
        rows.append((label, worker_time(engine, many, jobs_each, size, its, GPU_MAX_BATCH)))


def server_compiled_part(engine: Engine, rows: Rows, toy: bool) -> None:
    """One client's jobs alone and 16 clients' batched (up to GPU_MAX_BATCH), Adam, with the
    network's passes compiled in the background (engine/compiled.py, the server's --compile):
    first a warm-up that sends both until no new pass shape is met, each shape's compile
    awaited (the shapes, the compiles' seconds and the warm-up's a row), then the two rows as
    the server part's, each ratio to one client's jobs per minute without compiling, and the
    16 clients' ratio to one client's compiled, also with two batches at once (--max-running
    2), and the job worker's time with the network compiled. The toy run (the CPU test suite)
    compiles with dynamo's "eager" backend: the bookkeeping without a compiler's minutes."""
    from impasto_server.app import GPU_MAX_BATCH
    from impasto_server.engine.compiled import CompiledNet

    compiled = CompiledNet(engine.net, backend="eager" if toy else "inductor")
    row, many = server_rows(engine, rows, toy)
    size, its, jobs_each = server_job(toy)
    label = "server, network compiled: warm-up until every pass shape met is compiled"
    try:
        with rows.section(label), engine_set(engine, "compiled", compiled):
            started, shapes = time.perf_counter(), -1
            for _ in range(3):  # until a round meets no new shape
                server_throughput(engine, many, jobs_each, size, its, GPU_MAX_BATCH)
                server_throughput(engine, 1, jobs_each, size, its, 1)
                if not compiled.wait(60 if toy else 240):
                    raise RuntimeError(f"compiles still waiting: {compiled.stats()}")
                stats = compiled.stats()
                if stats["compiled"] + stats["failed"] == shapes:
                    break
                shapes = stats["compiled"] + stats["failed"]
            rows.append((label, (
                f"{stats['compiled']} shapes compiled in {stats['seconds']:.1f} s of compiles, "
                f"{stats['failed']} failed; warm-up {time.perf_counter() - started:.0f} s"
            )))  # fmt: skip
        before = compiled.stats()
        one = row(1, 1, compiled=compiled)
        jpm = row(many, GPU_MAX_BATCH, compiled=compiled)
        ratio = f"server, {many} clients batched against one client, both compiled"
        rows.append((ratio, f"{jpm / one:.2f}x" if one and jpm else "-"))
        two = row(many, GPU_MAX_BATCH, compiled=compiled, max_running=2)
        rows.append((f"{ratio}, two batches at once", f"{two / one:.2f}x" if one and two else "-"))
        after = compiled.stats()
        ran = after["compiled_passes"] - before["compiled_passes"]
        rows.append(("server, network compiled: passes that ran compiled code in its rows",
                     f"{ran} of {after['passes'] - before['passes']}"))  # fmt: skip
        label = (f"server, {many} clients, Adam, batched (up to {GPU_MAX_BATCH}), the network "
                 "compiled: the worker's time")  # fmt: skip
        with rows.section(label), engine_set(engine, "compiled", compiled):
            rows.append((label, worker_time(engine, many, jobs_each, size, its, GPU_MAX_BATCH)))
    finally:
        compiled.close()


def server_shapes_part(engine: Engine, rows: Rows, toy: bool) -> None:
    """What compiling costs a server that meets new shapes: 4 clients' batched Adam jobs,
    each client asking for three sizes in turn (six pass shapes: each size alone or batched),
    jobs per minute without compiling; then from cold with the network compiled in the
    background (engine/compiled.py, --compile), passes of shapes not compiled yet eager and new
    batches not recorded as CUDA graphs while a compile runs; then again once every shape met
    is compiled (the compiles awaited, their seconds a row)."""
    from impasto_server.app import GPU_MAX_BATCH
    from impasto_server.engine.compiled import CompiledNet

    sizes = "32,40,48" if toy else "256,384,512"
    clients, jobs_each, its = (2, 3, 2) if toy else (4, 6, 50)
    label = f"server, {clients} clients, Adam, batched, jobs of {sizes} px in turn"
    with rows.section("server warm-up"):
        server_throughput(engine, 1, 3, sizes, its, 1)
    plain = 0.0
    with rows.section(label):
        plain, _ = server_throughput(engine, clients, jobs_each, sizes, its, GPU_MAX_BATCH)
        rows.append((label, f"{plain:.1f} jobs/min (1.00x)"))
    compiled = CompiledNet(engine.net, backend="eager" if toy else "inductor")

    def compiled_row(name: str) -> None:
        before = compiled.stats()
        with rows.section(f"{label}, the network compiled {name}"):
            jpm, _ = server_throughput(engine, clients, jobs_each, sizes, its, GPU_MAX_BATCH)
            after = compiled.stats()
            ran = after["compiled_passes"] - before["compiled_passes"]
            rows.append((f"{label}, the network compiled {name}", (
                f"{jpm:.1f} jobs/min ({jpm / plain if plain else 0:.2f}x); passes "
                f"compiled {ran} of {after['passes'] - before['passes']}"
            )))  # fmt: skip

    try:
        with engine_set(engine, "compiled", compiled):
            compiled_row("from cold")
            start = time.perf_counter()
            done = compiled.wait(60 if toy else 150)
            stats = compiled.stats()
            rows.append((f"{label}: compiles awaited", (
                f"{time.perf_counter() - start:.0f} s, {stats['compiled']} shapes "
                f"compiled in {stats['seconds']:.1f} s of compiles, {stats['failed']} "
                f"failed{'' if done else ', some still waiting'}"
            )))  # fmt: skip
            compiled_row("every shape met compiled")
    finally:
        compiled.close()


@contextlib.contextmanager
def switch_interval(seconds: float | None):
    """The interpreter's switch interval (sys.setswitchinterval) for the while; None: as is."""
    before = sys.getswitchinterval()
    if seconds is not None:
        sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def engine_batch_ms(engine: Engine, runs: int, size: int, iterations: int) -> tuple[float, float]:
    """One batch of ``runs`` of the server rows' jobs (throughput_client.py's: one stage, Adam,
    the sample images) through the engine alone, no server: wall ms from its start to its last
    result (the median of three, after one to warm), and the ms of GPU kernels in one more
    (torch.profiler; 0 on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    options = StyleOptions.from_preset(
        "default", size=size, iterations=iterations, num_scales=1, seed=0, optimizer="adam"
    )
    content, style = samples.content(), samples.style(size=size)
    cuda = engine.device.startswith("cuda")

    def once() -> float:
        prepared = [engine.prepare(content, [style], options) for _ in range(runs)]
        start = time.perf_counter()
        for _, event in engine.run_batch(prepared):
            if isinstance(event, BaseException):
                raise event
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()
    wall = statistics.median(once() for _ in range(3))
    busy = 0.0
    if cuda:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            once()
        device = torch.autograd.DeviceType.CUDA
        busy = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == device)
    return wall * 1e3, busy / 1e3


def server_ratio_part(engine: Engine, rows: Rows, toy: bool) -> None:
    """The goal's ratio with its noise: one client's Adam jobs alone and 16 clients' batched
    (up to GPU_MAX_BATCH), one batch at a time, two at once and three at once (--max-running 2
    and 3: the server staggers their starts; three ran 1.08 and 1.05x two on server_host.py's
    stand-in with the host's launches), in turn, twice, one client sending four times the jobs
    of one of the 16 (six jobs of one client lasted under a second); then the rows of one
    client, one batch and two at once with the interpreter's switch interval at 0.5 ms
    (sys.setswitchinterval; Python's default is 5 ms: a thread that wants the interpreter lock
    back, as the job worker does after every torch call and every wait for the GPU, may wait
    that long while another thread runs Python); then the job worker's time (the default
    interval). First, the device's share: a batch of one and of GPU_MAX_BATCH of those jobs
    through the engine alone, wall and GPU kernel ms."""
    from impasto_server.app import GPU_MAX_BATCH

    size, its, jobs_each = server_job(toy)
    many = 2 if toy else 16
    for runs in (1, GPU_MAX_BATCH):
        label = f"engine alone, a batch of {runs} of the server rows' jobs"
        with rows.section(label):
            wall, busy = engine_batch_ms(engine, runs, size, its)
            rows.append((label, f"{wall:.1f} ms, GPU kernels {busy:.1f} ms"))
    with rows.section("server warm-up"):
        server_throughput(engine, 1, 2, size, its, 1)
        server_throughput(engine, many, 1, size, its, GPU_MAX_BATCH)
    for interval in (None, 0.0005):
        how = "" if interval is None else f", switch interval {interval * 1e3:g} ms"
        at_once = (1, 2, 3) if interval is None else (1, 2)
        label = (f"server-ratio{how}: 1 client ({4 * jobs_each} jobs) / {many} batched, "
                 + " / ".join(f"{n} at once" for n in at_once) + ", jobs/min")  # fmt: skip
        turns: list[tuple[float, ...]] = []
        with rows.section(label), switch_interval(interval):
            for _ in range(2):
                turns.append((
                    server_throughput(engine, 1, 4 * jobs_each, size, its, 1)[0],
                    *(server_throughput(engine, many, jobs_each, size, its, GPU_MAX_BATCH,
                                        max_running=n)[0] for n in at_once),
                ))  # fmt: skip
            text = ", ".join(" / ".join(f"{jpm:.1f}" for jpm in turn) for turn in turns)
            one, *batched = (sum(column) for column in zip(*turns))
            ratios = " / ".join(f"{b / one:.2f}x" for b in batched)
            rows.append((label, f"{text}: {ratios} ({len(turns)} turns)"))
    label = f"server-ratio: {many} clients batched (up to {GPU_MAX_BATCH}), the worker's time"
    with rows.section(label):
        rows.append((label, worker_time(engine, many, jobs_each, size, its, GPU_MAX_BATCH)))


def server_job(toy: bool) -> tuple[int, int, int]:
    """The server rows' jobs: side, iterations, and jobs each client sends."""
    return (32, 2, 2) if toy else (256, 50, 6)


def server_rows(engine: Engine, rows: Rows, toy: bool) -> tuple[Callable[..., None], int]:
    """``row(clients, batch, ...)``, which measures one server row, after a warm-up and one
    client's row (every row's ratio is to it); and how many clients are many."""

    size, its, jobs_each = server_job(toy)
    base = None
    many = 2 if toy else 16
    with rows.section("server warm-up"):  # the base row must not pay for the first job's setup
        server_throughput(engine, 1, 2, size, its, 1)

    def row(clients: int, batch: int, optimizer: str = "adam", other_graphs: bool = False,
            overlap: bool = True, keep_cache: bool | None = None, step_outside: bool = False,
            compiled: Any = None, **config) -> float:  # fmt: skip
        """The row's jobs per minute (0 where it failed). ``compiled``: a CompiledNet for
        the engine's passes (engine/compiled.py), its shapes compiled already."""
        nonlocal base
        graphs = engine.cuda_graphs != other_graphs  # the engine's default unless told other
        how = f"batched (up to {batch})" if batch > 1 else "alone"
        if other_graphs:
            how += ", CUDA graphs" if graphs else ", eager (no CUDA graphs)"
        if keep_cache is not None:
            how += ", recordings keep the allocator's cache" if keep_cache else (
                ", recordings empty the allocator's cache")  # fmt: skip
        if not overlap:
            how += ", each pass read before the next (no overlap)"
        if step_outside:
            how += ", each L-BFGS step outside the graph"
        if compiled is not None:
            how += ", the network compiled (--compile, every shape compiled)"
        if "max_running" in config:
            running = config["max_running"]
            at_once = "one batch at a time" if running == 1 else f"{running} batches at once"
            how += f", {at_once} (--max-running {running})"
        if "progress_rate" in config:
            how += f", --progress-rate {config['progress_rate']:g}"
        if "input_side" in config:
            how += f", the content sent at {config['input_side']} px a side"
        if "style_side" in config:
            how += f", each job its own {config['style_side']} px style"
        if config.get("prepare_ahead") == 0:
            how += ", no jobs prepared ahead (--prepare-ahead 0)"
        if "prepare_threads" in config:
            how += f", {config['prepare_threads']} thread(s) preparing them (--prepare-threads)"
        name = "L-BFGS" if optimizer == "lbfgs" else "Adam"
        label = f"server, {clients} client{'s' * (clients > 1)}, {name}, {how}"
        jpm = 0.0
        with rows.section(label):
            # a row that asks for graphs must not report an eager time as theirs
            asks = (other_graphs and graphs) or keep_cache is not None
            check = graph_failures() if asks else contextlib.nullcontext()
            kept = engine.graphs_keep_cache if keep_cache is None else keep_cache
            with (
                check, graphs_set(engine, graphs, graphs and not step_outside),
                engine_set(engine, "overlap", overlap),
                engine_set(engine, "graphs_keep_cache", kept),
                engine_set(engine, "compiled", compiled),
            ):  # fmt: skip
                jpm, mean_batch = server_throughput(
                    engine, clients, jobs_each, size, its, batch, optimizer, **config
                )
            base = base or jpm
            text = f"{jpm:.1f} jobs/min ({jpm / base:.2f}x), mean batch {mean_batch:.1f}"
            rows.append((label, text))
        return jpm

    row(1, 1)
    return row, many


def worker_parts() -> dict[str, list[tuple[Any, str]]]:
    """What worker_time times, part by part: the functions (owner, attribute) whose calls in the
    job worker's thread make each part, each counted once where it nests in another of its part
    (PreparedRun.step holds a _Stage.advance; one called otherwise is an overlapped Adam step,
    which _iterate takes itself)."""
    from impasto_server import scheduler
    from impasto_server.engine import graphs, transfer

    return {
        "prepare": [(scheduler.Job, "prepared")],  # made now, or waited for: made ahead
        "stages": [(transfer.PreparedRun, "begin_stage"), (transfer.PreparedRun, "end_stage"),
                   (transfer.Engine, "_stage_starts")],
        "passes": [(transfer.Engine, "_launch")],
        "reads": [(torch.Tensor, "tolist"), (torch.cuda.Event, "synchronize")],
        "recordings": [(graphs.PassGraphs, "_record")],
        "steps": [(transfer, "_adam_together"), (transfer.PreparedRun, "step"),
                  (transfer.PreparedRun, "report"), (transfer._Stage, "advance")],
        "results": [(transfer.PreparedRun, "result"), (transfer.Engine, "_download")],
        "events": [(scheduler.Outbox, "put"), (scheduler.Outbox, "finish")],
    }  # fmt: skip


@contextlib.contextmanager
def timing_calls(parts: dict[str, list[tuple[Any, str]]], thread: list[int | None]):
    """Each part's seconds in the thread whose ident ``thread[0]`` holds, its functions
    replaced by timed ones for the while. (cProfile cannot do it: from Python 3.12 it profiles
    every thread once enabled, and the server's other threads' calls mixed with the worker's.)"""
    spent = dict.fromkeys(parts, 0.0)
    depth = dict.fromkeys(parts, 0)
    saved: list[tuple[Any, str, Any]] = []

    def timed(part: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def call(*args, **kwargs):
            if threading.get_ident() != thread[0] or depth[part]:
                return function(*args, **kwargs)
            depth[part] += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - start
                depth[part] -= 1

        return call

    try:
        for part, targets in parts.items():
            for owner, name in targets:
                if not hasattr(owner, name):
                    continue  # an older engine's (a run that compares two)
                saved.append((owner, name, owner.__dict__.get(name)))
                setattr(owner, name, timed(part, getattr(owner, name)))
        yield spent
    finally:
        for owner, name, own in reversed(saved):
            if own is None:
                delattr(owner, name)  # inherited (Tensor.tolist): the base's again
            else:
                setattr(owner, name, own)


def worker_time(engine: Engine, clients: int, jobs_each: int, size: int, iterations: int,
                batch: int) -> str:  # fmt: skip
    """Where the server's job worker spends a batch (one more run of the ``clients`` row,
    batched, each part's functions timed in the worker thread alone): its wall time per batch
    iteration, how much of the row's time it was busy (the rest it waited for jobs), and each
    part's share, "passes" their launch (and a graph's recording), "reads" the wait for each
    pass's losses. The timing costs a little host time, so the row's own jobs/min is a little
    below the others'."""
    from impasto_server.service import StyleTransferService

    own = StyleTransferService._run_batch
    batches: list[int] = []
    whole = [0.0]
    worker: list[int | None] = [None]

    def profiled(self, jobs):  # the one worker thread: max_running is 1 when batched
        batches.append(len(jobs))
        worker[0] = threading.get_ident()
        start = time.perf_counter()
        try:
            return own(self, jobs)
        finally:
            whole[0] += time.perf_counter() - start
            worker[0] = None

    StyleTransferService._run_batch = profiled
    try:
        with timing_calls(worker_parts(), worker) as spent:
            jpm, _ = server_throughput(engine, clients, jobs_each, size, iterations, batch)
    finally:
        StyleTransferService._run_batch = own
    per_iteration = whole[0] / max(1, len(batches)) / iterations * 1e3
    parts = ", ".join(f"{part} {seconds / whole[0]:.0%}" for part, seconds in spent.items())
    wall = clients * jobs_each / jpm * 60.0  # the row's seconds, from the first job sent
    return (f"{per_iteration:.2f} ms a batch iteration ({len(batches)} batches, mean "
            f"{np.mean(batches):.1f} jobs; {jpm:.0f} jobs/min timed; the worker busy "
            f"{min(1.0, whole[0] / wall):.0%} of the time): {parts}")  # fmt: skip


def largest_part(engine: Engine, rows: Rows, content, style, toy: bool, best: str) -> None:
    from impasto_server.engine.options import SIZE_RANGE

    # No side past the engine's own limit on a result's longer side (a job asking for more is
    # refused as invalid, not for memory).
    limit = 128 if toy else SIZE_RANGE[1]
    with rows.section(f"largest square ({best})"):
        side, measured, misses, errors, bad, tried = largest_square(
            engine, content, style, 64 if toy else 4096, limit, best, step=64 if toy else 256
        )
        if bad is not None:
            how = f" (the next side tried, {bad} px, failed)"
        else:
            how = " (search cap)" if toy else " (the engine's largest size: fits)"
        rows.append((f"largest square ({best})", f"{side} px{how}"))
        if measured:
            estimate, peak = measured["estimate"], measured["peak"]
            text = f"{measured['pairs']} L-BFGS pairs"
            if peak:
                text += f", peak {peak / 2**30:.1f} GiB"
            if estimate and peak:
                text += f", plan's estimate {estimate / 2**30:.1f} GiB ({estimate / peak:.2f}x)"
            rows.append(("  at that side", text))
            if peak:
                per_mp = peak / (side * side / 1e6) / 2**20
                rows.append(("peak memory per megapixel", f"{per_mp:.0f} MiB"))
        rows.append(("  sides tried", "; ".join(tried)))
        rows.append(("plan misses (accepted, then out of memory)",
                     f"{len(misses)}" + (f" at {misses} px" if misses else "")))  # fmt: skip
        for at, message in errors:
            rows.append((f"  failed at {at} px (not memory)", message))


def compile_part(engine: Engine, rows: Rows, content, style, iters: int, warm: int) -> None:
    """One forward and backward pass eager against a CUDA graph of it; then the default job at
    512 px and then 768 px (a new shape), bfloat16: the engine's default as it is, and with the
    network under torch.compile, its default mode with static shapes (a compile for each new
    shape) and with dynamic ones (one compile for every shape, if it holds), and its
    reduce-overhead mode (512 px only)."""
    with rows.section("pass 512 px bfloat16, eager / CUDA graph"):
        eager_ms, graph_ms = graphed_ms(engine, 512, "bfloat16", 50)
        rows.append(("pass 512 px bfloat16, eager / CUDA graph",
                     f"{eager_ms:.2f} / {graph_ms:.2f} ms"))  # fmt: skip
    sides = (512, 768)
    label = "bfloat16 job, the engine's default (the torch.compile rows' base)"
    with rows.section(label):
        runs = [first_and_ms(engine, content, style, s, "bfloat16", iters, warm) for s in sides]
        rows.append((label, runs_text(sides, runs)))
    for mode, dynamic, at in ((None, False, sides), (None, True, sides),
                              ("reduce-overhead", False, sides[:1])):  # fmt: skip
        label = f"torch.compile ({mode or 'default'}, {'dynamic' if dynamic else 'static'} shapes)"
        with rows.section(label):
            rows.append((label, compiled_runs(engine, content, style, at, iters, warm, mode,
                                              dynamic)))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="tiny sizes; runs on the CPU")
    parser.add_argument("--device", default=None)
    goals = [part for part in PARTS if part not in MORE]
    parser.add_argument(
        "--only", default=",".join(goals),
        help=f"comma-separated: {','.join(PARTS)}, or all (default: {','.join(goals)})",
    )  # fmt: skip
    parser.add_argument(
        "--cudnn-autotune", choices=("on", "off"), default=None,
        help="cuDNN's autotuner (torch.backends.cudnn.benchmark) for the whole run; default: "
        "as the engine leaves it (off)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.cudnn_autotune:
        torch.backends.cudnn.benchmark = args.cudnn_autotune == "on"
    only = set(PARTS) if args.only == "all" else set(args.only.split(","))
    if only - set(PARTS):
        parser.error(f"unknown parts {sorted(only - set(PARTS))}; choose from {PARTS}")
    toy = args.toy
    device = args.device or ("cuda" if torch.cuda.is_available() and not toy else "cpu")
    cuda = device.startswith("cuda")
    content, style = samples.content(), samples.style(size=256)
    sizes = (32, 48) if toy else (512, 1024)
    iters, warm = (3, 2) if toy else (20, 5)
    precisions = [("float32", False), ("tf32", True), ("bfloat16", True)] if cuda else [
        ("float32", False)]  # fmt: skip
    print(f"device: {device} ({device_name(device)}); torch {torch.__version__}; "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    rows = Rows()
    with rows.part("setup"):
        engine = Engine(device=device, max_pixels=16384 * 16384)
    # Every pass that could not be recorded as a CUDA graph (and so ran eagerly) where the
    # engine's default records them: a row at the end; the graphs part checks its own.
    failed_recordings = GraphFailures()
    logging.getLogger("impasto_server.engine").addHandler(failed_recordings)
    rows.append(("CUDA graphs (the engine's default here)", "on" if engine.cuda_graphs else "off"))
    if cuda:
        rows.append(("cuDNN's autotuner", "on" if torch.backends.cudnn.benchmark else "off"))
    if "checks" in only:
        with rows.part("checks"):
            checks_part(device, rows)
    # In order of what matters most, so that a run cut short by its limit loses the least.
    if "iteration" in only:
        with rows.part("iteration"):
            for size in sizes:
                for label, allow in precisions:
                    precision = "bfloat16" if label == "bfloat16" else "float32"
                    with rows.section(f"ms/iteration {size} px {label}"):
                        with tf32(allow) if cuda else contextlib.nullcontext():
                            ms = ms_per_iteration(
                                engine, content, style, size, precision, iters, warm
                            )
                        rows.append((f"ms/iteration {size} px {label}", f"{ms:.2f}"))
    if cuda and "graphs" in only:
        with rows.part("graphs"):
            last_stage = functools.partial(default_last_stage, engine, content, style)
            graphs_part(engine, rows, content, style, iters, warm, lbfgs_iterations=last_stage)
    if "lbfgs" in only:
        step_side, history = (32, 5) if toy else (512, 100)
        step_label = f"L-BFGS step {step_side} px, history {history}: torch / impasto"
        with rows.part("lbfgs"), rows.section(step_label):
            theirs, their_reads = lbfgs_step.measure("torch", step_side, history, device)
            ours, our_reads = lbfgs_step.measure("impasto", step_side, history, device)
            reads = f"host reads {their_reads:.0f} / {our_reads:.0f}"
            rows.append((step_label, f"{theirs:.2f} / {ours:.2f} ms, {reads}"))
        capturable_label = f"L-BFGS step {step_side} px, history {history}: capturable" + (
            ", eager / as a CUDA graph" if cuda else "")  # fmt: skip
        with rows.part("lbfgs"), rows.section(capturable_label):
            kinds = ("capturable", "captured") if cuda else ("capturable",)
            ms = [lbfgs_step.measure(k, step_side, history, device)[0] for k in kinds]
            rows.append((capturable_label, " / ".join(f"{t:.2f}" for t in ms) + " ms"))
    if cuda and "profile" in only:
        with rows.part("profile"):
            profile_part(engine, rows, content, style)
    if "largest" in only:
        with rows.part("largest"):
            largest_part(engine, rows, content, style, toy, "bfloat16" if cuda else "float32")
    for name, server_rows_of in (
        ("server", server_part), ("server-more", server_more_part),
        ("server-compiled", server_compiled_part), ("server-shapes", server_shapes_part),
        ("server-ratio", server_ratio_part),
    ):  # fmt: skip
        if name in only:
            with rows.part(name):
                server_rows_of(engine, rows, toy)
    if cuda and "compile" in only:
        with rows.part("compile"):
            compile_part(engine, rows, content, style, iters, warm)
    if cuda and "autotune" in only:
        with rows.part("autotune"):
            autotune_part(engine, rows, content, style)
    if engine.cuda_graphs:
        rows.append(
            ("passes not recorded as CUDA graphs (ran eagerly)", f"{len(failed_recordings.seen)}")
        )
    rows.timing_row()
    print("-- the table --")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:{width}}  {value}")
    if rows.failed:
        print(f"{rows.failed} part(s) failed; tracebacks above", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
