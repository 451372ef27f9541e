"""benchmarks/gpu.py must keep working where there is no GPU: its toy run on the CPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_benchmark_runs_at_toy_sizes_on_the_cpu():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--toy", "--only", "all"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("device: cpu")
    # each row as it is measured, then the whole table after the marker line
    assert any(line.startswith("[") and "ms/iteration 32 px float32: " in line for line in lines)
    lines = lines[lines.index("-- the table --") :]
    table = dict(line.rsplit("  ", 1) for line in lines[1:] if "  " in line)
    table = {k.strip(): v.strip() for k, v in table.items()}
    # the style loss of bfloat16 features against float64's: bfloat16's rounding (2^-9), not more
    check = table["style loss of bfloat16 features"]
    low, high = (float(v) for v in check.split("loss / gradient ")[1].split(" (")[0].split(" / "))
    assert 0 < low < 1e-3 and 0 < high < 4e-3, check
    assert table["CUDA graphs (the engine's default here)"] == "off"  # a CPU engine
    assert float(table["ms/iteration 32 px float32"]) > 0
    assert float(table["ms/iteration 48 px float32"]) > 0
    assert table["largest square (float32)"].startswith("128 px")
    assert table["at that side"] == "100 L-BFGS pairs"  # gigabytes free: no pairs cut
    assert table["plan misses (accepted, then out of memory)"] == "0"
    step = table["L-BFGS step 32 px, history 5: torch / impasto"]
    assert step.endswith("host reads 14 / 0"), step
    assert float(table["L-BFGS step 32 px, history 5: capturable"].split()[0]) > 0
    # the plan's answer, then one real run there
    tried = table["sides tried"].split("; ")
    assert [t.split(" (")[0] for t in tried] == [
        "64 accepted by the plan",
        "128 accepted by the plan",
        "128 ran",
    ], tried
    # the real run's iterations: setup, eager and recording, then the steady ones
    times = [float(t) for t in re.findall(r"([0-9.]+) s", tried[-1])]
    assert len(times) == 3 and all(t > 0 for t in times), tried[-1]
    assert "jobs/min (1.00x)" in table["server, 1 client, Adam, alone"]
    for row in (
        "Adam, alone",
        "Adam, batched (up to 8)",
        "Adam, batched (up to 16)",  # twice the GPU default: the row that decides it
        "Adam, batched (up to 8), 2 batches at once (--max-running 2)",
        "L-BFGS, alone",
        "L-BFGS, batched (up to 8)",
        "Adam, batched (up to 8), no jobs prepared ahead (--prepare-ahead 0)",
        "Adam, batched (up to 8), the content sent at 128 px a side",
        (
            "Adam, batched (up to 8), the content sent at 128 px a side, no jobs prepared "
            "ahead (--prepare-ahead 0)"
        ),
        "Adam, batched (up to 8), each job its own 128 px style",
        (
            "Adam, batched (up to 8), the content sent at 128 px a side, 4 thread(s) preparing "
            "them (--prepare-threads)"
        ),
    ):
        assert "jobs/min" in table[f"server, 2 clients, {row}"]  # batched: the GPU default
    # the network compiled in the background (dynamo's "eager" backend here): a batch of one
    # and a batch of two or more, compiled in the warm-up, then every pass of the rows compiled
    warm = table["server, network compiled: warm-up until every pass shape met is compiled"]
    assert warm.startswith("2 shapes compiled in ") and ", 0 failed;" in warm, warm
    compiled = ", the network compiled (--compile, every shape compiled)"
    assert "jobs/min" in table[f"server, 1 client, Adam, alone{compiled}"]
    assert "jobs/min" in table[f"server, 2 clients, Adam, batched (up to 8){compiled}"]
    assert table["server, 2 clients batched against one client, both compiled"].endswith("x")
    two_at_once = ", 2 batches at once (--max-running 2)"
    assert "jobs/min" in table[f"server, 2 clients, Adam, batched (up to 8){compiled}{two_at_once}"]
    two = "server, 2 clients batched against one client, both compiled, two batches at once"
    assert table[two].endswith("x")
    # two clients' two jobs of two passes, batched or not, and one client's two
    ran = table["server, network compiled: passes that ran compiled code in its rows"]
    compiled, passes = (int(n) for n in ran.split(" of "))
    assert compiled == passes >= 12, ran
    timed = table[
        "server, 2 clients, Adam, batched (up to 8), the network compiled: the worker's time"
    ]
    assert " ms a batch iteration (" in timed, timed
    # jobs of three sizes in turn: without compiling, compiled from cold, then with every shape
    # met compiled (dynamo's "eager" backend here); each row a ratio to the first
    shapes = "server, 2 clients, Adam, batched, jobs of 32,40,48 px in turn"
    assert table[shapes].endswith("jobs/min (1.00x)")
    cold = table[f"{shapes}, the network compiled from cold"]
    warm = table[f"{shapes}, the network compiled every shape met compiled"]
    for row in (cold, warm):
        assert re.fullmatch(r"[0-9.]+ jobs/min \([0-9.]+x\); passes compiled \d+ of \d+", row), row
    compiled, passes = (int(n) for n in warm.split("passes compiled ")[1].split(" of "))
    assert 0 <= compiled <= passes and passes > 0, warm  # batches of one or two: timing
    awaited = table[f"{shapes}: compiles awaited"]
    assert " shapes compiled in " in awaited and awaited.endswith(", 0 failed"), awaited
    # where the job worker's time went, part by part, in the timed batched row
    worker = table["server, 2 clients, Adam, batched (up to 8): the worker's time"]
    shares = dict(part.rsplit(" ", 1) for part in worker.split(": ", 1)[1].split(", "))
    assert list(shares) == ["prepare", "stages", "passes", "reads", "recordings", "steps",
                            "results", "events"], worker  # fmt: skip
    assert float(worker.split(" ms")[0]) > 0
    assert 0 < int(worker.split("the worker busy ")[1].split("%")[0]) <= 100
    # each part timed once in the worker's own thread: a share of its time, never more
    assert all(0 <= int(share.rstrip("%")) <= 100 for share in shares.values()), worker
    assert int(shares["passes"].rstrip("%")) >= 20  # the CPU's passes: most of a toy batch
    assert shares["recordings"] == "0%"  # no CUDA graphs on the CPU
    # the goal's ratio with its noise: the engine alone (no kernels timed on a CPU), then the
    # rows in turn, with the default switch interval and with 0.5 ms, then the worker's time
    for runs in (1, 8):
        alone = table[f"engine alone, a batch of {runs} of the server rows' jobs"]
        assert re.fullmatch(r"[0-9.]+ ms, GPU kernels 0\.0 ms", alone), alone
    for how, at_once in (("", 3), (", switch interval 0.5 ms", 2)):
        label = (
            f"server-ratio{how}: 1 client (8 jobs) / 2 batched, "
            + " / ".join(f"{n} at once" for n in range(1, at_once + 1))
            + ", jobs/min"
        )
        turn = " / ".join([r"[0-9.]+"] * (1 + at_once))
        ratios = ": " + " / ".join([r"[0-9.]+x"] * at_once) + r" \(2 turns\)"
        assert re.fullmatch(f"{turn}, {turn}{ratios}", table[label]), table[label]
    worker = table["server-ratio: 2 clients batched (up to 8), the worker's time"]
    assert "mean 2.0 jobs" in worker and "stages " in worker, worker
    # where the run's time went: every part that ran, in the order it ran
    parts, whole = table["seconds by part"].split("; in all ")
    names = [part.rsplit(" ", 1)[0] for part in parts.split(", ")]
    assert names == ["setup", "checks", "iteration", "lbfgs", "largest", "server",
                     "server-more", "server-compiled", "server-shapes", "server-ratio"]  # fmt: skip
    assert float(whole) >= sum(float(part.rsplit(" ", 1)[1]) for part in parts.split(", ")) - 1
    # --only runs the parts named, in the table's order
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--toy", "--only", "lbfgs"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = proc.stdout.split("-- the table --")[1].strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("CUDA graphs (the engine's default here)"), rows
    assert rows[1].startswith("L-BFGS step 32 px") and rows[2].startswith("L-BFGS step 32 px")
    assert rows[3].startswith("seconds by part") and "setup" in rows[3] and "lbfgs" in rows[3]
