"""Time to quality on this machine: pastiche's L-BFGS run against impasto's presets.

pastiche (its own classes, as its command drives them) runs --steps L-BFGS steps from the content
image; impasto runs each configuration given with --impasto. Every 10 iterations each run's
current image is kept (the time spent keeping it is not counted), and afterwards all images are
measured with one yardstick: the paper's content distance (1/2 sum of squared conv4_2 differences
to the content) and style distance (mean over conv1_1..conv5_1 of 1/(4 N^2) sum (G - A)^2) under
the packaged original VGG19 weights, at the final size. Times count the optimisation, style
targets included, and exclude loading the weights (impasto's server keeps them loaded).

    .venv/bin/python benchmarks/time_to_quality.py --size 256 --steps 200 \\
        --impasto default:iterations=60 --plot docs/images/time_to_quality.png
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

EVERY = 10


def _pastiche(content: str, style: str, size: int, steps: int, out: str) -> None:
    import torch
    from pastiche.pastiche import VGG_MEAN, PasticheArtist

    torch.manual_seed(0)
    t0 = time.perf_counter()
    artist = PasticheArtist(content, [style], device="cpu", size=size)
    load = time.perf_counter() - t0  # weights and targets; its weights load is the larger part
    snapshots, paused = [], 0.0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        artist.draw()
        if step % EVERY == 0 or step == steps:
            t = time.perf_counter()
            x = artist.pastiche.detach().squeeze(0).clone()
            for i, shift in enumerate(VGG_MEAN):
                x[i] += shift
            x = x[[2, 1, 0]].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
            snapshots.append((step, t - start - paused, x))
            paused += time.perf_counter() - t
    with open(out, "wb") as f:
        pickle.dump({"setup": load, "snapshots": snapshots}, f)


def _impasto(content: str, style: str, size: int, spec: str, out: str) -> None:
    from impasto_server.engine import Engine, Progress, StyleOptions

    preset, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=")
        overrides[key] = (
            json.loads(value)
            if value[0] in "[{"
            else (
                int(value) if value.isdigit() else (float(value) if value[0].isdigit() else value)
            )
        )
    t0 = time.perf_counter()
    engine = Engine(device="cpu")
    setup = time.perf_counter() - t0
    # The preset as a server on this machine runs it: in the engine's default precision.
    overrides.setdefault("precision", engine.default_precision)
    options = StyleOptions.from_preset(preset, size=size, seed=0, **overrides)
    c = np.asarray(Image.open(content).convert("RGB"))
    s = np.asarray(Image.open(style).convert("RGB"))
    snapshots = []
    final_shape = engine.output_shape(c, options)
    for event in engine.run(c, [s], options, preview_every=1):
        if isinstance(event, Progress):
            last = event.iteration == options.iterations
            if (event.height, event.width) == final_shape and (
                event.iteration % EVERY == 0 or last
            ):
                # Preview conversion is a few ms; it is counted, which only slows impasto.
                snapshots.append((event.iteration, event.elapsed, event.preview))
    with open(out, "wb") as f:
        pickle.dump({"setup": setup, "snapshots": snapshots}, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200, help="pastiche's L-BFGS steps")
    parser.add_argument("--impasto", action="append", default=[],
                        help="preset[:key=value,...], e.g. default:iterations=60")  # fmt: skip
    parser.add_argument("--plot", help="write the curves to this PNG")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tool, content, style, spec, out = args.child
        if tool == "pastiche":
            _pastiche(content, style, args.size, int(spec), out)
        else:
            _impasto(content, style, args.size, spec, out)
        return

    from impasto import samples

    work = tempfile.mkdtemp(prefix="impasto-ttq-")
    content_path, style_path = os.path.join(work, "content.png"), os.path.join(work, "style.png")
    content, style = samples.content(), samples.style(size=args.size)
    Image.fromarray(content).save(content_path)
    Image.fromarray(style).save(style_path)
    runs = [("pastiche", str(args.steps))] + [("impasto", spec) for spec in args.impasto or [
        "default:iterations=60"]]  # fmt: skip
    curves = []
    for tool, spec in runs:
        out = os.path.join(work, f"run{len(curves)}.pkl")
        subprocess.run([sys.executable, __file__, "--size", str(args.size), "--child", tool,
                        content_path, style_path, spec, out], check=True)  # fmt: skip
        with open(out, "rb") as f:
            curves.append((f"{tool} {spec}", pickle.load(f)))
    shape = curves[0][1]["snapshots"][-1][2].shape[:2]
    from impasto_server.engine.yardstick import Yardstick

    measure = Yardstick(content, style, shape)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; python "
          f"{platform.python_version()}; {shape[0]}x{shape[1]} px; {time.strftime('%Y-%m-%d')}")  # fmt: skip
    print(f"{'run':44} {'iter':>5} {'seconds':>8} {'style dist':>11} {'content dist':>13}")
    table = []
    for label, data in curves:
        points = []
        for iteration, seconds, image in data["snapshots"]:
            c_d, s_d = measure(image)
            points.append((iteration, seconds, s_d, c_d))
        table.append((label, data["setup"], points))
        for iteration, seconds, s_d, c_d in points:
            if iteration % 50 == 0 or (iteration, seconds) == points[-1][:2]:
                print(f"{label:44} {iteration:5d} {seconds:8.1f} {s_d:11.4g} {c_d:13.4g}")
    ref_label, _, ref = table[0]
    _, ref_time, ref_style, ref_content = ref[-1]
    print(f"\nreference: {ref_label} ends at {ref_time:.1f} s with style {ref_style:.4g}, "
          f"content {ref_content:.4g}")  # fmt: skip
    for label, setup, points in table[1:]:
        good = [p for p in points if p[2] <= ref_style and p[3] <= ref_content]
        if good:
            t = good[0][1]
            print(f"{label}: no worse on both distances at iteration {good[0][0]}, {t:.1f} s = "
                  f"{t / ref_time:.2f} of pastiche's time")  # fmt: skip
        else:
            best = points[-1]
            print(f"{label}: never no worse on both (ends at style {best[2]:.4g}, content "
                  f"{best[3]:.4g}, {best[1]:.1f} s)")  # fmt: skip
    if args.plot:
        _plot(table, args.plot)
        print(f"plot: {args.plot}")


def _plot(table, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, _, points in table:
        seconds = [p[1] for p in points]
        axes[0].plot(seconds, [p[2] for p in points], marker=".", label=label)
        axes[1].plot(seconds, [p[3] for p in points], marker=".", label=label)
    axes[0].set(yscale="log", xlabel="seconds", ylabel="style distance (lower is better)")
    axes[1].set(yscale="log", xlabel="seconds", ylabel="content distance (lower is better)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
