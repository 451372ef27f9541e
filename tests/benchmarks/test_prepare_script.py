"""benchmarks/prepare.py at a toy size: it runs, and what it prints holds together."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_prepare_compares_the_two_ways_of_resizing_the_stages():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "prepare.py"), "--sides", "300x200",
         "64", "--sizes", "96", "--repeats", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# Engine.prepare") and len(lines) == 5
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[3:]]
    assert [row[:2] for row in cells] == [["300x200", "96 px"], ["64x64", "96 px"]]
    for row in cells:
        old, new, ratio = float(row[2]), float(row[3]), float(row[4].rstrip("x"))
        assert old > 0 and new > 0 and abs(ratio - old / new) <= 0.1 + 0.1 * ratio
    mean, worst = (float(v) for v in cells[0][5].split(" / "))
    assert 0 < mean <= worst < 255  # a larger photograph: the coarse stages differ, a little
    assert cells[1][5] == "0.00 / 0.0"  # a smaller one: every stage from the content, as before
