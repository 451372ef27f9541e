"""The server's host memory when many clients send large images at once, with and without a
bound on what requests' images may hold (``--max-held-mb``).

    python benchmarks/held_memory.py [--clients 24] [--images 5] [--side 4096]
                                     [--limits 0 1024]

A request's images are decoded at full size as it arrives and kept until its job ends. Each
of ``--clients`` clients (a connection each) sends one job whose content and styles
(``--images`` in all) are ``--side`` px square PNGs of smooth gradients, a few hundred KB
each on the wire, 48 MiB each once decoded; the server (a child process, ``--max-running
1``) runs the first and queues the others. Per ``--max-held-mb`` value (0: no bound): jobs
taken and refused, the server's resident memory once every client has its answer, and its
peak (VmHWM). The server starts anew for each value, in the same run.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import threading
import time

import numpy as np
import psutil
from impasto.client import Client, ImpastoError, Queued, Started
from impasto.local import LocalServer
from PIL import Image


def smooth_png(side: int, seed: int) -> bytes:
    """A ``side`` px square RGB gradient, different per seed, as a (small) PNG."""
    y, x = np.mgrid[0:side, 0:side]
    rgb = np.stack([(x // 16 + seed) % 256, (y // 16) % 256, ((x + y) // 32) % 256], -1)
    out = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(out, "PNG", compress_level=1)
    return out.getvalue()


def memory_mib(process: psutil.Process) -> tuple[float, float]:
    """(resident, peak resident) MiB of ``process``, from /proc."""
    fields = {}
    with open(f"/proc/{process.pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def one_limit(limit: int, clients: int, images: list[bytes]) -> dict:
    args = ["--max-running", "1", "--max-held-mb", str(limit), "--queue-size", str(clients)]
    args += ["--max-jobs-per-client", str(clients)]
    with LocalServer(extra_args=args) as server:
        process = psutil.Process(server.process.pid)
        content, styles = images[0], images[1:]  # PNG files' bytes, sent as they are
        answers: list[str] = []
        lock = threading.Lock()
        done = threading.Event()
        connections = [Client(server.address) for _ in range(clients)]
        jobs = []

        def send(client: Client) -> None:
            try:
                job = client.stylize(content, styles, size=64, iterations=100_000, num_scales=1)
                jobs.append(job)
                for event in job:
                    if isinstance(event, (Queued, Started)):
                        answer = "taken"
                        break
            except ImpastoError as exc:
                answer = exc.code.name
            with lock:
                answers.append(answer)
                if len(answers) == clients:
                    done.set()

        baseline = memory_mib(process)[0]
        started = time.monotonic()
        threads = [threading.Thread(target=send, args=(c,), daemon=True) for c in connections]
        for thread in threads:
            thread.start()
        assert done.wait(600), "not every client had its answer in 10 minutes"
        answered = time.monotonic() - started
        resident, peak = memory_mib(process)
        for job in jobs:
            job.cancel()
        for client in connections:
            client.close()
    return {
        "limit": limit,
        "taken": answers.count("taken"),
        "refused": len(answers) - answers.count("taken"),
        "codes": sorted(set(answers) - {"taken"}),
        "baseline": baseline,
        "resident": resident,
        "peak": peak,
        "seconds": answered,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--images", type=int, default=5, help="content and styles per job")
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--limits", type=int, nargs="+", default=[0, 1024], help="--max-held-mb")
    args = parser.parse_args()
    images = [smooth_png(args.side, seed) for seed in range(args.images)]
    decoded = args.side * args.side * 3 * args.images / 2**20
    print(
        f"{args.clients} clients, one job each: {args.images} images of {args.side} px "
        f"({sum(map(len, images)) / 2**20:.1f} MiB on the wire, {decoded:.0f} MiB decoded); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {time.strftime('%Y-%m-%d')}\n"
    )
    print(
        f"{'--max-held-mb':>13}  {'taken':>5}  {'refused':>7}  {'idle MiB':>8}  "
        f"{'resident MiB':>12}  {'peak MiB':>8}  {'answered in':>11}"
    )
    for limit in args.limits:
        row = one_limit(limit, args.clients, images)
        codes = f" ({', '.join(row['codes'])})" if row["codes"] else ""
        print(
            f"{row['limit'] or 'none':>13}  {row['taken']:>5}  {row['refused']:>7}  "
            f"{row['baseline']:>8.0f}  {row['resident']:>12.0f}  {row['peak']:>8.0f}  "
            f"{row['seconds']:>10.1f}s{codes}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
