"""Many clients leaning on one server: cancellations, deadlines, a full queue, and no job lost.

    python benchmarks/load.py [--clients 32] [--jobs 3] [--rounds 3] [--in-flight 2]
                              [--size 32] [--iterations 2] [--time-limit 600] [--json F]

Starts a server as a child process on 127.0.0.1 (``impasto.local.LocalServer``; or use
``--server HOST:PORT --server-pid PID`` for one already running), then runs ``--rounds``
rounds. In each round ``--clients`` clients (one connection each) send ``--jobs`` tiny jobs,
``--in-flight`` at a time. About a third of the jobs are cancelled (when their first queue
event arrives, when their first progress arrives, or after a random delay), about a tenth get
a short deadline. It prints how every job ended, rejections and why, queue positions that went
up (there should be none), the time to the first event (p50/p95), and the server's resident
memory and thread count before, during and after each round. Bounded: every call has a
deadline and the whole run stops at ``--time-limit`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import psutil
from impasto.client import Client, ImpastoError, Progress, Queued, Result, Started

#: Plans and roughly how often each is drawn.
PLANS = (
    ("normal", 0.57),
    ("cancel_when_queued", 0.11),
    ("cancel_when_running", 0.11),
    ("cancel_at_random", 0.11),
    ("short_deadline", 0.10),
)
#: Endings that count as a clear answer for each plan (anything else is "lost").
EXPECTED = {
    "normal": {"result", "RESOURCE_EXHAUSTED"},
    "cancel_when_queued": {"result", "CANCELLED", "RESOURCE_EXHAUSTED"},
    "cancel_when_running": {"result", "CANCELLED", "RESOURCE_EXHAUSTED"},
    "cancel_at_random": {"result", "CANCELLED", "RESOURCE_EXHAUSTED"},
    "short_deadline": {"result", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"},
}


@dataclass
class JobRecord:
    plan: str
    ending: str = "lost"  # result | a status code name | lost
    message: str = ""
    first_event_s: float | None = None
    cancelled_while: str | None = None  # queued | running | before_first_event
    positions: list[int] = field(default_factory=list)

    @property
    def positions_monotonic(self) -> bool:
        return all(b < a for a, b in zip(self.positions, self.positions[1:], strict=False))


@dataclass
class Sample:
    rss_mb: float
    threads: int


@dataclass
class RoundReport:
    before: Sample
    peak: Sample
    after: Sample
    seconds: float
    jobs: list[JobRecord]


def _sample(process: psutil.Process) -> Sample:
    return Sample(process.memory_info().rss / 2**20, process.num_threads())


def _draw_plan(rng: random.Random) -> str:
    names, weights = zip(*PLANS, strict=True)
    return rng.choices(names, weights)[0]


def _run_job(client: Client, content, style, plan: str, rng: random.Random, opts) -> JobRecord:
    record = JobRecord(plan)
    timeout = rng.uniform(0.2, 1.5) if plan == "short_deadline" else 120.0
    submitted = time.perf_counter()
    job = client.stylize(content, [style], timeout=timeout, **opts)
    state = {"seen": "before_first_event"}
    timer: threading.Timer | None = None

    def cancel() -> None:
        if record.cancelled_while is None:
            record.cancelled_while = state["seen"]
            job.cancel()

    if plan == "cancel_at_random":
        timer = threading.Timer(rng.uniform(0.0, 3.0), cancel)
        timer.daemon = True
        timer.start()
    try:
        for event in job:
            if record.first_event_s is None:
                record.first_event_s = time.perf_counter() - submitted
            if isinstance(event, Queued):
                state["seen"] = "queued"
                record.positions.append(event.position)
                if plan == "cancel_when_queued":
                    cancel()
            elif isinstance(event, (Started, Progress)):
                state["seen"] = "running"
                if plan == "cancel_when_running" and isinstance(event, Progress):
                    cancel()
            elif isinstance(event, Result):
                record.ending = "result"
    except ImpastoError as error:
        record.ending = error.code.name
        record.message = error.message
    finally:
        if timer is not None:
            timer.cancel()
    return record


def run_round(
    address: str,
    process: psutil.Process,
    *,
    clients: int,
    jobs: int,
    in_flight: int,
    opts: dict,
    seed: int,
    stop_at: float,
    token: str | None = None,
) -> RoundReport:
    rng = np.random.default_rng(seed)
    content = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    styles = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    records: list[JobRecord] = []
    lock = threading.Lock()
    before = _sample(process)
    peak = Sample(before.rss_mb, before.threads)
    sampling = threading.Event()

    def sampler() -> None:
        while not sampling.wait(0.1):
            try:
                now = _sample(process)
            except psutil.Error:
                return
            peak.rss_mb = max(peak.rss_mb, now.rss_mb)
            peak.threads = max(peak.threads, now.threads)

    def one_client(index: int) -> None:
        local = random.Random(seed * 1000 + index)
        with Client(address, token=token) as client:
            pending = list(range(jobs))

            def worker() -> None:
                while time.monotonic() < stop_at:
                    with lock:
                        if not pending:
                            return
                        pending.pop()
                    plan = _draw_plan(local)
                    style = styles[local.randrange(len(styles))]
                    record = _run_job(client, content, style, plan, local, opts)
                    with lock:
                        records.append(record)

            threads = [threading.Thread(target=worker) for _ in range(in_flight)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    sampling.set()
    watcher.join()
    time.sleep(1.0)  # let the server's per-call threads wind down before the "after" sample
    return RoundReport(before, peak, _sample(process), seconds, records)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def _why_rejected(message: str) -> str:
    if "queue is full" in message:
        return "queue full"
    if "per-client" in message:
        return "per-client limit"
    if "Concurrent RPC limit" in message:
        return "all call slots busy"  # grpcio's maximum_concurrent_rpcs
    return message[:60]


def summarise(rounds: list[RoundReport]) -> dict:
    records = [r for rnd in rounds for r in rnd.jobs]
    endings = Counter(r.ending for r in records)
    rejected = Counter(
        _why_rejected(r.message) for r in records if r.ending == "RESOURCE_EXHAUSTED"
    )
    lost = [r for r in records if r.ending not in EXPECTED[r.plan]]
    first = [r.first_event_s for r in records if r.first_event_s is not None]
    cancelled_while = Counter(
        r.cancelled_while for r in records if r.cancelled_while and r.ending == "CANCELLED"
    )
    return {
        "jobs": len(records),
        "accepted": len(records) - endings.get("RESOURCE_EXHAUSTED", 0),
        "completed": endings.get("result", 0),
        "cancelled": endings.get("CANCELLED", 0),
        "cancelled_while": dict(cancelled_while),
        "deadline_exceeded": endings.get("DEADLINE_EXCEEDED", 0),
        "rejected": dict(rejected),
        "lost": len(lost),
        "lost_examples": [asdict(r) for r in lost[:5]],
        "endings": dict(endings),
        "queue_position_increases": sum(not r.positions_monotonic for r in records),
        "first_event_p50_ms": percentile(first, 50) * 1000,
        "first_event_p95_ms": percentile(first, 95) * 1000,
        "rounds": [
            {
                "seconds": round(rnd.seconds, 1),
                "rss_mb": [round(s.rss_mb, 1) for s in (rnd.before, rnd.peak, rnd.after)],
                "threads": [s.threads for s in (rnd.before, rnd.peak, rnd.after)],
            }
            for rnd in rounds
        ],
    }


def run_load(
    address: str,
    pid: int,
    *,
    clients: int = 32,
    jobs: int = 3,
    rounds: int = 3,
    in_flight: int = 2,
    size: int = 32,
    iterations: int = 2,
    seed: int = 0,
    time_limit: float = 600.0,
    token: str | None = None,
    on_round: Callable[[int, RoundReport], None] | None = None,
) -> dict:
    """Run the rounds against a server at ``address`` whose process is ``pid``; summarise."""
    process = psutil.Process(pid)
    opts = {"size": size, "iterations": iterations, "num_scales": 1}
    stop_at = time.monotonic() + time_limit
    with Client(address, token=token) as warm:  # first-use costs are not the load's
        warm.stylize(np.zeros((40, 48, 3), np.uint8), [np.zeros((8, 8, 3), np.uint8)], **opts)
    reports = []
    for index in range(rounds):
        report = run_round(
            address,
            process,
            clients=clients,
            jobs=jobs,
            in_flight=in_flight,
            opts=opts,
            seed=seed + index,
            stop_at=stop_at,
            token=token,
        )
        reports.append(report)
        if on_round is not None:
            on_round(index, report)
    summary = summarise(reports)
    summary["timed_out"] = time.monotonic() > stop_at
    return summary


def print_table(summary: dict, args: argparse.Namespace) -> None:
    print(
        f"\n{args.clients} clients x {args.jobs} jobs x {args.rounds} rounds, {args.in_flight} "
        f"in flight per client, {args.size} px, {args.iterations} iterations; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n"
    )
    rows = [
        ("jobs sent", summary["jobs"]),
        ("accepted", summary["accepted"]),
        ("completed (result)", summary["completed"]),
        ("cancelled (while queued / running)", (f"{summary['cancelled']} "
         f"({summary['cancelled_while'].get('queued', 0)} / "
         f"{summary['cancelled_while'].get('running', 0)})")),
        ("deadline exceeded", summary["deadline_exceeded"]),
        ("rejected (why)", f"{sum(summary['rejected'].values())} {summary['rejected']}"),
        ("lost (no result, no clear status)", summary["lost"]),
        ("jobs whose queue position went up", summary["queue_position_increases"]),
        ("time to first event p50 / p95 (ms)",
         f"{summary['first_event_p50_ms']:.1f} / {summary['first_event_p95_ms']:.1f}"),
    ]  # fmt: skip
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\n| round | seconds | server RSS MiB before / peak / after | threads before / peak / "
          "after |\n|---|---|---|---|")  # fmt: skip
    for index, rnd in enumerate(summary["rounds"], start=1):
        rss = " / ".join(f"{v:.1f}" for v in rnd["rss_mb"])
        threads = " / ".join(str(v) for v in rnd["threads"])
        print(f"| {index} | {rnd['seconds']} | {rss} | {threads} |")
    if summary["lost_examples"]:
        print("\nlost:", json.dumps(summary["lost_examples"], indent=1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--jobs", type=int, default=3, help="jobs per client per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--in-flight", type=int, default=2, help="jobs per client at once")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole run")
    p.add_argument("--server", help="HOST:PORT of a running server (default: start one)")
    p.add_argument("--server-pid", type=int, help="its process id, for memory and threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args()
    for name in ("clients", "jobs", "rounds", "in_flight"):
        if not 1 <= getattr(args, name) <= 256:
            p.error(f"--{name.replace('_', '-')} must be within 1..256")

    def progress(index: int, report: RoundReport) -> None:
        print(f"round {index + 1}: {len(report.jobs)} jobs in {report.seconds:.1f}s", flush=True)

    if args.server:
        if args.server_pid is None:
            p.error("--server needs --server-pid")
        summary = run_load(args.server, args.server_pid, clients=args.clients, jobs=args.jobs,
                           rounds=args.rounds, in_flight=args.in_flight, size=args.size,
                           iterations=args.iterations, seed=args.seed,
                           time_limit=args.time_limit, on_round=progress)  # fmt: skip
    else:
        from impasto.local import LocalServer

        with LocalServer(device=args.device) as server:
            assert server.process is not None and server.address is not None
            summary = run_load(server.address, server.process.pid, clients=args.clients,
                               jobs=args.jobs, rounds=args.rounds, in_flight=args.in_flight,
                               size=args.size, iterations=args.iterations, seed=args.seed,
                               time_limit=args.time_limit, on_round=progress)  # fmt: skip
    print_table(summary, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=1)
    # Position increases are expected only when a client has several jobs waiting (fair
    # admission lets other clients in before its second one); see docs/reliability.md.
    increases_matter = args.in_flight == 1
    return 1 if summary["lost"] or (increases_matter and summary["queue_position_increases"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
