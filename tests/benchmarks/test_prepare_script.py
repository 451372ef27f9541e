"""benchmarks/prepare.py at a toy size: it runs, and what it prints holds together."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tables(text: str) -> list[list[list[str]]]:
    """Each table's rows (below its header and rule), as lists of cells."""
    tables, rows = [], None
    for line in text.splitlines():
        if line.startswith("# "):
            rows = []
            tables.append(rows)
        elif line.startswith("| ") and rows is not None and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return [rows[1:] for rows in tables]  # the header's cells dropped


def test_prepare_compares_each_way_with_its_peer():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "prepare.py"), "--sides", "300x200",
         "64", "--sizes", "96", "--repeats", "1", "--threads", "1", "2", "--quality", "4"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    contents, styles, cached, digests, threads, quality = _tables(proc.stdout)
    assert [row[:2] for row in contents] == [["300x200", "96 px"], ["64x64", "96 px"]]
    for row in contents:
        old, new, ratio = float(row[2]), float(row[3]), float(row[4].rstrip("x"))
        assert old > 0 and new > 0 and abs(ratio - old / new) <= 0.1 + 0.1 * ratio
    mean, worst = (float(v) for v in contents[0][5].split(" / "))
    assert 0 < mean <= worst < 255  # a larger photograph: the coarse stages differ, a little
    assert contents[1][5] == "0.00 / 0.0"  # a smaller one: every stage from the content, as before
    assert [row[:2] for row in styles] == [["300x200", "96 px"], ["64x64", "96 px"]]
    for row in styles:
        for cell in row[2:4]:
            assert all(float(v) > 0 for v in cell.split(" / "))
    assert [row[:2] for row in cached] == [["300x200", "96 px"], ["64x64", "96 px"]]
    for row in cached:
        old, new = (float(v) for v in row[2].split(" / "))
        assert old > 0 and new > 0
        held_before, held_now = (float(v) for v in row[4].split(" / "))
        assert 0 < held_now <= held_before  # the style's pixels are not held
    # Held before and not now: a 300x200 content and style as float32 pixels (0.69 MiB each).
    held_before, held_now = (float(v) for v in cached[0][4].split(" / "))
    assert abs(held_before - held_now - 2 * 300 * 200 * 12 / 2**20) < 0.1
    assert [row[0] for row in digests] == ["300x200", "64x64"]
    assert float(digests[0][1]) > 0 and float(digests[0][2]) > 0  # 0.17 MiB: a few hundredths
    assert [row[0] for row in threads] == ["300x200", "64x64"]
    for row in threads:
        assert row[1].endswith("(1.00x)") and float(row[2].split()[0]) > 0
    assert [row[0] for row in quality] == ["4"]
    for cell in quality[0][1:]:
        style_distance, content_distance = (float(v) for v in cell.split(" / "))
        assert style_distance > 0 and content_distance > 0
