"""benchmarks/host_overhead.py at a toy size: it runs, and what it prints holds together."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_host_overhead_counts_fewer_operations_per_job_in_a_batch():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "host_overhead.py"), "--size", "32",
         "--batch", "1", "3", "--optimizers", "adam", "--repeats", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("device: cpu")
    rows: dict[tuple[str, str, int], float] = {}
    for line in lines[2:]:
        precision, optimizer, *network, jobs, ops, computing, ms = line.split()
        assert optimizer == "adam" and float(ms) > 0
        assert 0 < float(computing) < float(ops)
        rows[precision, " ".join(network), int(jobs)] = float(ops)
    once = "weights cast once"
    # one pass of the network serves the batch: fewer operations per job than alone
    assert rows["float32", once, 3] < rows["float32", once, 1]
    if ("bfloat16", once, 1) in rows:  # a CPU with bfloat16 instructions
        # autocast cast every weight and bias (13 convolutions) on every pass
        assert rows["bfloat16", "autocast (as before)", 1] - rows["bfloat16", once, 1] >= 26
