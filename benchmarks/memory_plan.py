"""The memory plan against what a job really uses: for each size and precision, the plan's
estimate of a job's peak (Engine.plan_memory, made to measure the job), the peak of the tensors
the job then creates (counted by MemoryBudget, what the estimate models), the growth of the
process's peak resident memory over the check and the job (what the operating system sees), and
what the check costs: its seconds against one iteration of the job (timed under the count).

The job is the default preset's last stage at that size: one stage of 31 iterations (30 L-BFGS
pairs, as the default 150 iterations give their last stage), stopped after its fourth iteration
(its history is allocated in full when the stage starts). Each case runs in a process of its
own, so one case's peak resident memory does not hide the next's.

Then, against this machine's own memory (what the engine reads at start), the verdict on the
default preset's full job at each --admission size (150 iterations, four stages, the default
precision): accepted with its pairs per stage and estimate, or refused with the size it names,
and how long the check took.

    .venv/bin/python benchmarks/memory_plan.py [--sizes 256 512 1024] [--precisions ...]
                                               [--admission 2048 4096]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def case(size: int, precision: str) -> dict:
    import psutil
    import torch
    from impasto import samples
    from impasto_server.engine import Cancelled, Engine, Progress, StyleOptions
    from impasto_server.engine.memory import quick_bound
    from impasto_server.engine.memory_budget import MemoryBudget

    engine = Engine(device="cpu")
    content = np.ascontiguousarray(samples.content())
    style = samples.style(size=512)
    options = StyleOptions.from_preset(
        "default", size=size, iterations=31, num_scales=1, precision=precision, seed=0
    )
    height, width = engine.output_shape(content, options)
    # Below the quick bound, so that the plan measures the job rather than passing it at once.
    capacity = quick_bound(height * width, 1, 1.0) - 1
    rss_before = psutil.Process().memory_info().rss  # the probes' peaks are far below the job's
    started = time.perf_counter()
    plan = engine.plan_memory(content, [style], options, capacity=capacity)
    plan_seconds = time.perf_counter() - started
    counter = MemoryBudget(1 << 62)
    times: list[float] = []
    graphed = _StepWatch(engine, counter)
    with counter:
        try:
            for event in engine.run(
                content, [style], options, memory=plan, should_stop=lambda: len(times) >= 4
            ):
                if isinstance(event, Progress):
                    times.append(time.perf_counter())
        except Cancelled:
            pass
    graphed.finish()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "shape": [height, width],
        "pairs": plan.pairs[-1],
        "estimate": plan.needed,
        "counted": counter.peak,
        "step": graphed.step,
        "graphed": graphed.peak,
        "rss_growth": max(0, peak_rss - rss_before),
        "plan_seconds": plan_seconds,
        "iteration_seconds": float(np.median(np.diff(times))),
        "threads": torch.get_num_threads(),
    }


class _StepWatch:
    """What a job would count with its pass replayed as a CUDA graph (on a GPU; see
    engine/graphs.py): the graph keeps the pass's memory between iterations, so the optimiser's
    step allocates on top of the pass's peak instead of after it is freed. Wraps the engine's
    ``_evaluate`` to count, apart, each pass's peak and what each step allocates above what the
    pass left: ``step`` is the largest such, ``peak`` the largest pass peak plus its step's."""

    def __init__(self, engine, counter) -> None:
        self.counter, self.step, self.peak = counter, 0, 0
        self._after: int | None = None
        self._pass_peak = self._saved = 0
        evaluate = engine._evaluate

        def watched(*args, **kwargs):
            self.finish()  # the step between the last pass and this one
            counter, saved = self.counter, self.counter.peak
            counter.peak = counter.live
            evaluate(*args, **kwargs)
            self._pass_peak, self._after = counter.peak, counter.live
            self._saved = max(saved, counter.peak)
            counter.peak = counter.live  # from here: the step's own peak

        engine._evaluate = watched

    def finish(self) -> None:
        """Counts the step since the last pass (the job's last step, once the job is over)."""
        if self._after is None:
            return
        step = self.counter.peak - self._after
        self.step = max(self.step, step)
        self.peak = max(self.peak, self._pass_peak + step)
        self.counter.peak = max(self._saved, self.counter.peak)
        self._after = None


def admission(sizes: list[int]) -> None:
    from impasto import samples
    from impasto_server.engine import Engine, InsufficientMemory, StyleOptions

    engine = Engine(device="cpu")
    print(f"\njob memory on this machine: {engine.job_memory_bytes / 2**30:.1f} GiB; "
          f"default preset, 150 iterations, {engine.default_precision}")  # fmt: skip
    style = samples.style(size=512)
    for size in sizes:
        content = np.ascontiguousarray(np.resize(samples.content(), (size, size, 3)))
        options = StyleOptions.from_preset(
            "default", size=size, iterations=150, precision=engine.default_precision
        )
        started = time.perf_counter()
        try:
            plan = engine.plan_memory(content, [style], options)
        except InsufficientMemory as exc:
            verdict = f"refused, needs {exc.needed / 2**30:.1f} GiB; largest that fits: "
            verdict += "x".join(map(str, exc.largest)) if exc.largest else "none"
        else:
            estimate = f"{plan.needed / 2**30:.1f} GiB" if plan.needed else "not measured"
            verdict = f"accepted, pairs per stage {list(plan.pairs)}, estimate {estimate}"
        print(f"{size:>5} px: {verdict} ({time.perf_counter() - started:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--admission", type=int, nargs="*", default=[2048, 4096])
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(int(args.case[0]), args.case[1])))
        return
    print(f"cpu ({platform.machine()}, {platform.processor() or 'unknown'}), "
          f"python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    print(f"{'size':>10} {'precision':>9} {'pairs':>5} {'estimate':>9} {'counted':>9} "
          f"{'est/cnt':>7} {'rss grew':>9} {'est/rss':>7} {'check s':>7} {'s/iter':>6} "
          f"{'step':>7} {'est/graphed':>11}")  # fmt: skip
    mib = 1 << 20
    for size in args.sizes:
        for precision in args.precisions:
            out = subprocess.run(
                [sys.executable, __file__, "--case", str(size), precision],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode != 0:
                print(f"{size:>10} {precision:>9} failed: {out.stderr.strip()[-300:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            shape = "x".join(map(str, r["shape"]))
            print(f"{shape:>10} {precision:>9} {r['pairs']:>5} {r['estimate'] / mib:>7.0f}Mi "
                  f"{r['counted'] / mib:>7.0f}Mi {r['estimate'] / r['counted']:>7.2f} "
                  f"{r['rss_growth'] / mib:>7.0f}Mi {r['estimate'] / r['rss_growth']:>7.2f} "
                  f"{r['plan_seconds']:>7.2f} {r['iteration_seconds']:>6.2f} "
                  f"{r['step'] / mib:>5.1f}Mi {r['estimate'] / r['graphed']:>11.2f}",
                  flush=True)  # fmt: skip
    if args.admission:
        admission(args.admission)


if __name__ == "__main__":
    main()
