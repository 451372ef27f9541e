"""benchmarks/compiled_pass.py at a toy size, with dynamo's "eager" backend (no compiler): a
row per precision, each with its times, ratio and compile seconds."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_compiled_pass_prints_eager_and_compiled_times_per_precision():
    script = os.path.join(ROOT, "benchmarks", "compiled_pass.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.join(ROOT, "proto"), os.path.join(ROOT, "server")]))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, script, "--size", "32", "--passes", "3", "--backend", "eager"],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("device: cpu") and "32 px, backend eager" in lines[0]
    row = re.compile(r"(\w+) +eager +([0-9.]+) ms, compiled +([0-9.]+) ms \(([0-9.]+)x\), "
                     r"compile ([0-9.]+) s")  # fmt: skip
    rows = [row.fullmatch(line) for line in lines[1:]]
    assert rows and all(rows), lines
    assert rows[0].group(1) == "float32"
    for match in rows:
        assert float(match.group(2)) > 0 and float(match.group(3)) > 0
        assert float(match.group(5)) > 0
