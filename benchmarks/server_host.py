"""The server's own host work at a GPU's pace, on any machine: jobs per minute against the
device's time alone, and where the job worker's time goes.

    python benchmarks/server_host.py [--clients 1 4 16] [--jobs 3] [--size 64] [--iterations 50]
                                     [--input-side 512] [--style-side 0]
                                     [--pass-ms 0.41 0.59] [--forward-ms 0.3]
                                     [--progress-rates 0 20] [--overlap off on]
                                     [--prepare-ahead on] [--styles-ahead on]
                                     [--switch-intervals-ms 5] [--max-running 1]
                                     [--stagger server] [--launches 0]

On a GPU the server's Python (the job worker's loop, the gRPC threads that stream each job's
events, the clients' requests) shares one interpreter lock, and at a few ms an iteration it,
not the GPU, can set the pace: on an H200 run 5 gave 16 batched clients 2.88x one client's
jobs per minute, about 12.5 ms a batch iteration against some 5 ms of GPU work
(docs/benchmarks.md). This script runs the real server (gRPC on loopback, the scheduler, the
worker, the events, each client a process of its own as in gpu.py's server rows) with the
device replaced by a stand-in (Device): the work launched on it runs in order while the host
goes on, as on a GPU's stream, and needs no interpreter lock to start. A pass through the
network takes it ``a + b * batch`` ms (``--pass-ms``; by default run 5's 2.78 ms for a graphed
batch of four 256 px Adam runs, and 1.0 ms assumed for one) and leaves a gradient of ones; the
read of its losses waits for it. A forward without gradients (content and style targets)
takes ``--forward-ms`` and is waited for at once; its features are zeros of their shapes. A
wait for the device is a sleep, which does not hold the interpreter lock (nor does a wait for
a GPU). Everything else is real: the requests (the 512 x 512 sample photograph, or it resized
by each client to --input-side pixels a side; the server resizes it to --size), the optimiser
steps (on this machine's CPU, small at 64 px), events, results. With --style-side N each job
sends a style of its own, N pixels a side, which the server has not cached (by default every
job sends the same small style, cached after the first).

Every pass is then a replay of a CUDA graph, as a GPU's are from a stage's third pass on.
With --launches N, the host pays for what graphs leave it (stand_in): each stage's first two
passes N torch calls each, launched as the device runs them, and the batch's recording (its
third) an eager pass more, then N calls with the device idle and the GPU to the worker alone:
the host work of a batch's start that --max-running above 1 with staggered starts (--stagger,
forced on or off, or as the server has them) is meant to hide behind another batch's passes.
On this machine a torch call on a one-value tensor takes about 2.5 us, a GPU's launch some
8 us: 1000 calls stand for an eager 256 px pass's 300 or so launches.

Per configuration (clients, the server's --progress-rate, Engine.overlap, whether the server
prepares waiting jobs ahead: --prepare-ahead's default, or 0, and whether a job's styles are
resized when it is prepared, the engine's way, or where each stage begins, as before): jobs
per minute; the ideal, from the device's time alone at the mean batch size; the worker's time
per batch iteration: waiting for the device, waiting to take the interpreter back after it,
launching eager passes and recordings (--launches), preparing jobs (or waiting for what the
server prepared ahead), starting and ending stages, optimiser steps, handing events to the
streams, results, and the rest of the worker's loop; and the CPU time a job of the server's
process and of the clients'. Only ratios within one run mean much: this machine is noisy, and
its cores are shared with the clients.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import itertools
import threading
import time

import torch
from gpu import server_throughput, switch_interval  # beside this script
from impasto_server import scheduler, service
from impasto_server.engine import Engine, graphs, transfer
from impasto_server.engine.vgg import CONV_INDEX
from machine import describe


class Clock:
    """Exclusive wall time of the wrapped functions, in the job worker's thread only (inside
    ``StyleTransferService._run_batch``): a function's time excludes the wrapped functions it
    calls, so the parts add up."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.local = threading.local()

    def wrap(self, owner, name: str, part: str, outer: bool = False) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            stack = getattr(self.local, "stack", None)
            if stack is None and not outer:
                return original(*args, **kwargs)  # not the worker's
            if stack is None:
                stack = self.local.stack = []
            stack.append(0.0)  # time of the wrapped calls inside this one
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = stack.pop()
                self.seconds[part] += elapsed - inner
                if stack:
                    stack[-1] += elapsed
                elif outer:
                    self.local.stack = None

        setattr(owner, name, timed)

    def add(self, part: str, seconds: float) -> None:
        """Time spent in ``part`` inside the wrapped function now running (none: not counted)."""
        stack = getattr(self.local, "stack", None)
        if stack:
            self.seconds[part] += seconds
            stack[-1] += seconds


def feature_shape(net: torch.nn.Module, layer: str, height: int, width: int) -> tuple[int, ...]:
    """(channels, h, w) of a layer's features for an image of height x width."""
    index = CONV_INDEX[layer]
    pools = sum(isinstance(m, torch.nn.MaxPool2d) for m in list(net.features)[:index])
    return (net.features[index].out_channels, height >> pools, width >> pools)


class Device:
    """The GPU's stand-in: a stream's clock. Work launched on it starts when the work before it
    ends (or at once, if the device is idle) and takes its time; a wait sleeps until then.
    Nothing on it needs the interpreter lock, as nothing on a GPU does: a thread that ran the
    work would need the lock to start each piece, and wait for the host's threads to get it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.launched = 0
        self.ends: dict[int, float] = {}  # when each launch ends (recent ones)
        self.last = 0.0  # when the last launch ends

    def launch(self, seconds: float) -> int:
        with self.lock:
            self.last = max(time.perf_counter(), self.last) + seconds
            self.launched += 1
            self.ends[self.launched] = self.last
            self.ends.pop(self.launched - 64, None)
            return self.launched

    def wait(self, upto: int | None = None) -> None:
        """Until the work launched so far (or up to launch ``upto``) is done: the time to its
        end is the device's part of the caller's, any beyond it (the sleep's overshoot, the
        interpreter lock taken back) the interpreter's."""
        start = time.perf_counter()
        with self.lock:
            end = self.last if upto is None else self.ends.get(upto, start)
        if end > start:
            time.sleep(end - start)
        now = time.perf_counter()
        self.clock.add("waiting for the device", max(0.0, end - start))
        self.clock.add("waiting for the interpreter", now - max(end, start))


def launching(calls: int) -> None:
    """A pass's kernels launched by the host: ``calls`` torch calls on a one-value tensor, each
    a call into torch as a GPU's launch is (the interpreter lock let go and taken back)."""
    one = torch.zeros(1)
    for _ in range(calls):
        one.add_(1.0)


def stand_in(engine: Engine, clock: Clock, pass_ms: tuple[float, float], forward_ms: float,
             launches: int = 0):  # fmt: skip
    """Replace the device's work by its time on a Device (see the module's docstring): a
    pass is launched, and the read of its losses waits for it; returns an undo.

    With ``launches``, passes cost the host what a GPU's CUDA graphs leave it: a stage's first
    two passes are eager, ``launches`` torch calls each while the device runs them; its third
    is recorded for the batch (again whenever the batch's runs change): a first pass as
    eager, the device waited for, ``launches`` calls more (the capture) with the GPU to
    itself (``graphs.gate.alone``) while the device idles, then the replay; the passes after
    it are replays, which cost the host nothing more. Without, every pass is a replay."""
    a, b = pass_ms
    device = Device(clock)
    real = engine.net, transfer.Engine._pass, transfer.Engine._evaluate, transfer._Read

    class Net(torch.nn.Module):  # the no-gradient forwards: content and style targets
        features = real[0].features

        def forward(self, pixels, layers, pooling="max", dtype=None):
            device.wait(device.launch(forward_ms / 1e3))  # their features are read at once
            n, _, h, w = pixels.shape
            return {
                name: torch.zeros((n, *feature_shape(real[0], name, h, w)), dtype=dtype)
                for name in layers
            }

    def launch() -> float:
        """A pass's launches, timed as the worker's "launching passes"; their seconds."""
        start = time.perf_counter()
        launching(launches)
        spent = time.perf_counter() - start
        clock.add("launching passes", spent)
        return spent

    def eager(seconds: float) -> None:  # the device runs the kernels as they are launched
        device.launch(max(seconds - launch(), 1e-5))

    def fake_pass(self, stages):
        for stage in stages:
            stage.x.grad = torch.ones_like(stage.x)
        seconds = (a + b * len(stages)) / 1e3
        key = tuple(id(stage) for stage in stages)
        lead = stages[0]
        if launches and lead.steps < 2:
            eager(seconds)
        elif launches and getattr(lead, "stand_in_recorded", None) != key:
            lead.stand_in_recorded = key
            eager(seconds)  # on the side stream, before the capture
            device.wait()  # the capture begins with a synchronisation
            with graphs.gate.alone():
                launch()  # the capture
            device.launch(seconds)  # the replay
        else:
            device.launch(seconds)
        return torch.ones(len(stages), len(transfer.shared.TERMS))

    def evaluate(self, stages, graphs=None):  # the engine's, with its read waiting (Adam only)
        terms = self._launch(stages, graphs)
        pending = [stage.pending_read() for stage in stages]  # a stage's first: its scale
        device.wait()
        values = torch.cat([terms.reshape(-1), *(p for p in pending if p is not None)])
        self._take(stages, values.tolist(), pending)

    class Read(transfer._Read):  # an overlapped pass's read: waits for that pass
        def __init__(self, terms: torch.Tensor) -> None:
            super().__init__(terms)
            self.launch = device.launched

        def values(self) -> list[float]:
            device.wait(self.launch)
            return super().values()

    engine.net = Net()
    transfer.Engine._pass, transfer.Engine._evaluate, transfer._Read = fake_pass, evaluate, Read

    def undo() -> None:
        device.wait()
        engine.net = real[0]
        transfer.Engine._pass, transfer.Engine._evaluate, transfer._Read = real[1:]

    return undo


def instrument(clock: Clock) -> contextlib.ExitStack:
    """Time the worker's parts (restored when the stack closes)."""
    stack = contextlib.ExitStack()
    parts = [
        (service.StyleTransferService, "_run_batch", "the rest of the worker's loop", True),
        (scheduler.Job, "prepared", "preparing jobs", False),  # or waiting for it, made ahead
        (transfer.Engine, "_stage_starts", "stages", False),  # the batch's part of them
        (transfer.PreparedRun, "begin_stage", "stages", False),
        (transfer.PreparedRun, "end_stage", "stages", False),
        (transfer.PreparedRun, "step", "optimiser steps", False),
        (transfer.PreparedRun, "report", "optimiser steps", False),  # an overlapped step's
        (transfer._Stage, "advance", "optimiser steps", False),  # half: its Progress, its step
        (transfer, "_adam_together", "optimiser steps", False),
        (transfer.PreparedRun, "result", "results", False),
        (transfer.Engine, "_download", "results", False),  # the batch's copy of its images
        (scheduler.Outbox, "put", "events", False),
        (scheduler.Outbox, "finish", "events", False),
    ]
    for owner, name, part, outer in parts:
        if not hasattr(owner, name):
            continue  # an older engine's (a run that compares two trees)
        original = getattr(owner, name)
        stack.callback(setattr, owner, name, original)
        clock.wrap(owner, name, part, outer)
    return stack


PARTS = ("waiting for the device", "waiting for the interpreter", "launching passes",
         "preparing jobs", "stages", "optimiser steps", "events", "results",
         "the rest of the worker's loop")  # fmt: skip


def measure(
    engine: Engine, clock: Clock, clients: int, jobs: int, size: int, iterations: int,
    batch: int, progress_rate: float, pass_ms: tuple[float, float], ahead: bool = True,
    input_side: int = 512, style_side: int = 0, styles_ahead: bool = True, max_running: int = 1,
) -> tuple[str, ...]:  # fmt: skip
    batches: list[int] = []  # each batch's jobs
    stats: dict = {}
    with instrument(clock) as restore:
        timed = service.StyleTransferService._run_batch

        def counted(self, members):
            batches.append(len(members))
            return timed(self, members)

        restore.callback(setattr, service.StyleTransferService, "_run_batch", timed)
        service.StyleTransferService._run_batch = counted
        if not styles_ahead:  # as before: each stage resizes its styles as it begins
            restore.callback(setattr, Engine, "_styles_ahead", Engine._styles_ahead)
            Engine._styles_ahead = lambda *_: {}
        jpm, mean = server_throughput(
            engine, clients, jobs, size, iterations, batch if clients > 1 else 1,
            stats=stats, input_side=input_side, style_side=style_side,
            progress_rate=progress_rate,
            prepare_ahead=None if ahead else 0, max_running=max_running if clients > 1 else 1,
        )  # fmt: skip
    a, b = pass_ms
    ideal = 60e3 / (iterations * (a + b * mean) / mean)
    per_iteration = 1e3 / (len(batches) * iterations)  # seconds -> ms a batch iteration
    shares = " / ".join(f"{clock.seconds[part] * per_iteration:.2f}" for part in PARTS)
    done = clients * jobs
    return (
        f"{clients}", f"{progress_rate:g}", "on" if engine.overlap else "off",
        "on" if ahead else "off", "on" if styles_ahead else "off", f"{jpm:.1f}",
        f"{ideal:.0f}", f"{jpm / ideal:.2f}", f"{mean:.1f}",
        f"{sum(clock.seconds.values()) * per_iteration:.2f} ({shares})",
        (f"{stats['server_cpu_seconds'] / done * 1e3:.0f} / "
         f"{stats['clients_cpu_seconds'] / done * 1e3:.0f}"),
    )  # fmt: skip


@contextlib.contextmanager
def staggering(how: str):
    """The server's scheduler with staggered starts forced on or off (``how`` "server": as the
    server makes it)."""
    if how == "server":
        yield
        return
    init = scheduler.Scheduler.__init__

    def forced(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "stagger": how == "on"})

    scheduler.Scheduler.__init__ = forced
    try:
        yield
    finally:
        scheduler.Scheduler.__init__ = init


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--jobs", type=int, default=3, help="jobs each client sends")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--input-side", type=int, default=512,
                        help="the content's pixels a side, as the clients send it")  # fmt: skip
    parser.add_argument("--style-side", type=int, default=0,
                        help="each job a style of its own, this many pixels a side")  # fmt: skip
    parser.add_argument("--batch", type=int, default=8, help="the server's --max-batch")
    parser.add_argument("--pass-ms", type=float, nargs=2, default=[0.41, 0.59],
                        metavar=("A", "B"), help="a pass sleeps A + B * batch ms")  # fmt: skip
    parser.add_argument("--forward-ms", type=float, default=0.3)
    parser.add_argument(
        "--progress-rates",
        type=float,
        nargs="+",
        default=[0.0, 20.0],
        help="the server's --progress-rate values to compare",
    )
    parser.add_argument("--overlap", choices=("off", "on"), nargs="+", default=["off", "on"],
                        help="Engine.overlap values to compare")  # fmt: skip
    parser.add_argument("--prepare-ahead", choices=("off", "on"), nargs="+", default=["on"],
                        help="compare the server preparing waiting jobs ahead (its default) "
                        "with not (0)")  # fmt: skip
    parser.add_argument("--styles-ahead", choices=("off", "on"), nargs="+", default=["on"],
                        help="compare a job's styles resized when it is prepared (the engine's "
                        "way) with where each stage begins")  # fmt: skip
    parser.add_argument("--max-running", type=int, default=1,
                        help="the server's --max-running where clients are batched")  # fmt: skip
    parser.add_argument("--stagger", choices=("server", "on", "off"), default="server",
                        help="staggered batch starts with --max-running above 1: as the "
                        "server has them, or forced on or off")  # fmt: skip
    parser.add_argument("--launches", type=int, default=0,
                        help="torch calls the host makes to launch an eager pass (see "
                        "stand_in; 0: every pass a replay)")  # fmt: skip
    parser.add_argument("--switch-intervals-ms", type=float, nargs="+", default=[5.0],
                        help="the interpreter's switch intervals to compare (sys."
                        "setswitchinterval; Python's default is 5 ms)")  # fmt: skip
    args = parser.parse_args()

    engine = Engine(device="cpu")
    pass_ms = (args.pass_ms[0], args.pass_ms[1])
    print(
        f"# server_host.py: {describe('cpu')}; a pass {pass_ms[0]:g} + {pass_ms[1]:g} x batch "
        f"ms, a forward {args.forward_ms:g} ms; {args.size} px Adam jobs of "
        f"{args.iterations} iterations from {args.input_side} px content, {args.jobs} a client, "
        f"batches of up to {args.batch}, {args.max_running} at once"
        + (f" (staggered: {args.stagger})" if args.max_running > 1 else "")
        + (f"; eager passes and recordings {args.launches} launches each" if args.launches
           else "")
        + (f"; each job its own {args.style_side} px style" if args.style_side else "")
    )  # fmt: skip
    header = (
        "clients", "switch interval ms", "progress rate", "overlap", "prepare ahead",
        "styles ahead", "jobs/min",
        "ideal", "of ideal", "mean batch",
        f"worker ms a batch iteration: all ({' / '.join(PARTS)})",
        "CPU ms a job: server / clients",
    )  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for clients in args.clients:
        for rate in args.progress_rates:
            for interval, overlap, ahead, styles in itertools.product(
                args.switch_intervals_ms, args.overlap, args.prepare_ahead, args.styles_ahead
            ):
                engine.overlap = overlap == "on"
                clock = Clock()
                undo = stand_in(engine, clock, pass_ms, args.forward_ms, args.launches)
                try:
                    with switch_interval(interval / 1e3), staggering(args.stagger):
                        row = measure(engine, clock, clients, args.jobs, args.size,
                                      args.iterations, args.batch, rate, pass_ms, ahead == "on",
                                      args.input_side, args.style_side, styles == "on",
                                      args.max_running)  # fmt: skip
                finally:
                    undo()
                row = (row[0], f"{interval:g}", *row[1:])
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
