"""benchmarks/batching.py at a toy size: it runs, and what it prints holds together."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_batched_jobs_start_from_their_solo_losses_and_the_kernel_floor_is_printed():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "batching.py"), "--size", "32",
         "--iterations", "4", "--jobs", "2", "--precision", "float32"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert (
        lines[0].startswith("device: cpu") and "2 jobs of 32 px, 4 iterations, float32" in lines[0]
    )
    assert lines[1].split()[-4:] == ["kern", "mean", "kern", "max"], lines[1]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert sorted(rows) == ["adam", "lbfgs"], lines
    for optimizer, (alone, batch, ratio, mean, worst, apart, style_alone, style_batch,
                    kern_mean, kern_max) in rows.items():  # fmt: skip
        assert float(alone) > 0 and float(batch) > 0, optimizer
        # the ratio is of the unrounded times: within what rounding to 0.01 s allows
        low = (float(batch) - 0.005) / (float(alone) + 0.005) - 0.005
        high = (float(batch) + 0.005) / (float(alone) - 0.005) + 0.005
        assert low <= float(ratio) <= high, (optimizer, alone, batch, ratio)
        # each job's first loss in the batch is its solo run's to float tolerance
        assert apart == "-" or int(apart) >= 2, (optimizer, apart)
        assert 0 <= float(mean) <= int(worst) <= 255 and 0 <= float(kern_mean) <= int(kern_max)
        # as good by the yardstick: the style distances agree closely
        assert abs(float(style_batch) / float(style_alone) - 1) < 0.05, optimizer
