"""benchmarks/gpu.py must keep working where there is no GPU: its toy run on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_benchmark_runs_at_toy_sizes_on_the_cpu():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--toy"],
        capture_output=True, text=True, timeout=300,
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
    for clients in (1, 2):
        for mode in ("alone", "batched (up to 16)"):
            assert "jobs/min" in table[f"server, {clients} clients, Adam, {mode}"]
    assert "jobs/min" in table["server, 2 clients, Adam, batched (up to 8)"]  # the GPU default
    assert "jobs/min" in table["server, 2 clients, L-BFGS, batched (up to 16)"]
    # --only runs the parts named, in the table's order
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--toy", "--only", "lbfgs"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = proc.stdout.split("-- the table --")[1].strip().splitlines()
    assert len(rows) == 2 and rows[0].startswith("CUDA graphs (the engine's default here)"), rows
    assert rows[1].startswith("L-BFGS step 32 px"), rows
