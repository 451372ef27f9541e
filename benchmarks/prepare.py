"""A job's host work before its first pass (Engine.prepare: checks, images to float32 planes,
the content resized to each coarse-to-fine stage), for photographs larger than the result.

Each stage's content comes from the finest stage's pixels where the content is larger than
that stage (the engine's way), against each stage resized from the photograph itself (as
before, the peer, run in the same process and interleaved with it). Prints milliseconds a job
(median of --repeats, after a warm-up), the ratio, and how far each coarse stage's pixels are
from the photograph's own resize (mean and largest difference in levels of 255; the finest
stage's are the same either way).

    .venv/bin/python benchmarks/prepare.py [--sides 512 2048 4032x3024] [--sizes 256 512]
                                           [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from impasto import samples
from impasto_server.engine import Engine, StyleOptions, imaging
from impasto_server.engine.transfer import PreparedRun
from machine import describe  # beside this script
from PIL import Image

ENGINES_WAY = PreparedRun._content_stages


def each_from_the_photograph(run: PreparedRun) -> list[torch.Tensor]:
    """The peer: every stage resized from the content itself."""
    stages = [imaging.resize(run.inputs.content, shape) for shape in run.shapes]
    if run.options.color_preservation == "luminance":
        stages = [imaging.luminance_rgb(px) for px in stages]
    return stages


def photograph(side: str) -> np.ndarray:
    width, _, height = side.partition("x")
    size = (int(width), int(height or width))
    return np.asarray(Image.fromarray(samples.content()).resize(size, Image.Resampling.BICUBIC))


def timed(engine: Engine, way, content: np.ndarray, style: np.ndarray,
          options: StyleOptions) -> tuple[float, PreparedRun]:  # fmt: skip
    PreparedRun._content_stages = way
    try:
        started = time.perf_counter()
        run = engine.prepare(content, [style], options)
        return time.perf_counter() - started, run
    finally:
        PreparedRun._content_stages = ENGINES_WAY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", nargs="+", default=["512", "2048", "4032x3024"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    engine = Engine(device="cpu")
    style = samples.style()
    print(f"# Engine.prepare, the default preset (4 stages): {describe('cpu')}")
    print("| content | result | from the photograph ms | from the finest stage ms | ratio "
          "| coarse stages apart: mean / max levels |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for side in args.sides:
        content = photograph(side)
        for size in args.sizes:
            options = StyleOptions.from_preset("default", size=size)
            timed(engine, ENGINES_WAY, content, style, options)  # warm-up, both ways
            timed(engine, each_from_the_photograph, content, style, options)
            old, new = [], []
            for _ in range(args.repeats):
                seconds, before = timed(engine, each_from_the_photograph, content, style, options)
                old.append(seconds)
                seconds, now = timed(engine, ENGINES_WAY, content, style, options)
                new.append(seconds)
            apart = [(a - b).abs() for a, b in zip(before.content_px[:-1], now.content_px[:-1])]
            assert torch.equal(before.content_px[-1], now.content_px[-1])
            mean = float(torch.cat([d.flatten() for d in apart]).mean()) if apart else 0.0
            worst = max((float(d.max()) for d in apart), default=0.0)
            a, b = statistics.median(old) * 1e3, statistics.median(new) * 1e3
            h, w = content.shape[:2]
            print(f"| {w}x{h} | {size} px | {a:.1f} | {b:.1f} | {a / b:.2f}x "
                  f"| {mean:.2f} / {worst:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
