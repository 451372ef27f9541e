"""What a total-variation weight does at the default preset's other weights: the result's mean
absolute difference between neighbouring pixels (8-bit levels) and the final loss terms, for a
range of tv_weight values and two sizes. The TV term is a mean over pixels, like the style term,
so a weight acts alike at every size; the useful range follows style_weight.

    .venv/bin/python benchmarks/tv_weight.py [--sizes 128 256] [--iterations 80]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from impasto import samples
from impasto_server.engine import Engine, StyleOptions


def neighbour_difference(image: np.ndarray) -> float:
    x = image.astype(np.float32)
    return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--iterations", type=int, default=80)
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 1e11, 1e12, 1e13, 1e14])
    args = parser.parse_args()
    engine = Engine()
    content, style = samples.content(), samples.style(size=256)
    print(f"{engine.device} ({platform.machine()}), {engine.default_precision}, "
          f"{args.iterations} iterations, default preset, seed 0, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    print(f"{'size':>5} {'tv_weight':>9} {'neighbour diff':>14} {'vs none':>8} "
          f"{'content':>9} {'style':>9} {'tv':>9}")  # fmt: skip
    for size in args.sizes:
        base = None
        for weight in args.weights:
            options = StyleOptions.from_preset(
                "default", size=size, iterations=args.iterations, seed=0, tv_weight=weight
            )
            result = list(engine.run(content, [style], options))[-1]
            diff = neighbour_difference(result.image)
            base = base or diff
            losses = result.losses
            print(f"{size:>5} {weight:>9.0e} {diff:>14.2f} {diff / base:>8.2f} "
                  f"{losses['content']:>9.2e} {losses['style']:>9.2e} {losses['tv']:>9.2e}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
