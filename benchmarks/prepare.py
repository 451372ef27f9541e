"""A job's host work before and between its passes, for images larger than the result: the
content resized to each coarse-to-fine stage and each style to its size beside it.

1. Engine.prepare with a large content photograph: each coarser stage's content from the
   finest stage's pixels where the photograph is larger (the engine's way), against each stage
   resized from the photograph itself (as before, the peer). Also how far each coarse stage's
   pixels are from the photograph's own resize (mean and largest difference in levels of 255;
   the finest stage's are the same either way).
2. A job with a large style the Gram cache has not seen: the styles resized when the job is
   prepared (the engine's way; on a server, ahead, while the device runs other jobs) against
   resized where each stage begins (as before), in the job worker while the device waits:
   milliseconds of Engine.prepare and of the stages' starts (their style targets included).
3. A job whose style the Gram cache holds (a client that sends its style with every job): the
   style converted to float32 pixels only where a target is made from it, and the content's
   full-size pixels let go once its stages are made (the engine's way), against every style
   converted when the job is prepared and both held while the job lasts (as before), for a
   content photograph and a style of each side: milliseconds of Engine.prepare and the MiB of
   pixels a prepared job holds.
4. The key the Gram cache files an image under, taken for every job that sends it: SHA-256
   (the engine's, computed in hardware by most x86-64 and Arm CPUs) against blake2b (before).
5. With --threads N ...: jobs prepared a second by N threads at once, each job with a content
   photograph and a style of its own of each side (the most a job can bring to prepare), the
   Gram cache empty: what a server's --prepare-threads can gain on this machine's cores.
6. With --quality N ...: the default preset at 256 px on the sample images, N iterations,
   with the content's stages made each way, measured by the yardstick of time_to_quality.py
   (style and content distance, lower is better).

Each peer runs in the same process, interleaved with the engine's way; medians of --repeats
after a warm-up.

    .venv/bin/python benchmarks/prepare.py [--sides 512 2048 4032x3024] [--sizes 256 512]
                                           [--repeats 7] [--threads 1 2 3]
                                           [--quality 140 150 160]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from impasto import samples
from impasto_server.engine import Engine, StyleOptions, imaging
from impasto_server.engine.cache import GramCache
from impasto_server.engine.transfer import PreparedRun, _digest, _Inputs
from machine import describe  # beside this script
from PIL import Image

CONTENT_STAGES = PreparedRun._content_stages
STYLES_AHEAD = Engine._styles_ahead
INPUTS = Engine._inputs
LET_GO = _Inputs.let_go


def each_from_the_photograph(run: PreparedRun) -> list[torch.Tensor]:
    """The peer: every stage resized from the content itself."""
    stages = [imaging.resize(run.inputs.content, shape) for shape in run.shapes]
    if run.options.color_preservation == "luminance":
        stages = [imaging.luminance_rgb(px) for px in stages]
    return stages


def none_ahead(*_: Any) -> dict:
    """The peer: no style resized when the job is prepared; each stage resizes its own."""
    return {}


def styles_converted(engine: Engine, *args: Any) -> _Inputs:
    """The peer: every style converted to float32 pixels as the job is prepared."""
    inputs = INPUTS(engine, *args)
    for index in range(len(inputs.styles)):
        inputs.style_px(index)
    return inputs


def hold_pixels(_: _Inputs, keep_content: bool) -> None:
    """The peer: a job's full-size pixels (content and styles) held while it lasts."""


def held_bytes(run: PreparedRun) -> int:
    """Host memory a prepared job's pixels take (its images as float32, each stage's content,
    the styles resized ahead)."""
    inputs = run.inputs
    tensors = [inputs.content, inputs.alpha, inputs.init, *inputs._style_px.values(),
               *run.content_px, *run.styles_px.values()]  # fmt: skip
    unique = {id(t): t for t in tensors if t is not None}
    return sum(t.untyped_storage().nbytes() for t in unique.values())


def dimensions(side: str) -> tuple[int, int]:
    """Width and height from "2048" or "4032x3024"."""
    width, _, height = side.partition("x")
    return int(width), int(height or width)


def photograph(side: str) -> np.ndarray:
    size = dimensions(side)
    return np.asarray(Image.fromarray(samples.content()).resize(size, Image.Resampling.BICUBIC))


def painting(side: str) -> np.ndarray:
    width, height = dimensions(side)
    square = samples.style(size=max(width, height))
    return np.ascontiguousarray(square[:height, :width])


def using(content_stages: Callable, styles_ahead: Callable) -> Callable:
    def apply() -> None:
        PreparedRun._content_stages = content_stages
        Engine._styles_ahead = styles_ahead

    return apply


def restore() -> None:
    using(CONTENT_STAGES, STYLES_AHEAD)()
    Engine._inputs = INPUTS
    _Inputs.let_go = LET_GO


def converting_every_style() -> None:
    Engine._inputs = styles_converted
    _Inputs.let_go = hold_pixels


def prepared(engine: Engine, content: np.ndarray, style: np.ndarray, options: StyleOptions,
             way: Callable) -> tuple[float, PreparedRun]:  # fmt: skip
    way()
    try:
        started = time.perf_counter()
        run = engine.prepare(content, [style], options)
        return time.perf_counter() - started, run
    finally:
        restore()


def interleaved(ways: dict[Any, Callable[[], Any]], repeats: int) -> dict[Any, list[Any]]:
    """What each way returns in ``repeats`` rounds in which the ways take turns (so this
    machine's drift touches them alike), after one round that warms them up."""
    results: dict[Any, list[Any]] = {name: [] for name in ways}
    for repeat in range(repeats + 1):
        for name, way in ways.items():
            outcome = way()
            if repeat:
                results[name].append(outcome)
    return results


def stage_starts(engine: Engine, run: PreparedRun) -> float:
    """Seconds of the run's stage starts (one iteration a stage): the batch's part
    (Engine._stage_starts, its start image and content targets) and the run's own."""
    spent = 0.0

    def timed(function: Callable) -> Callable:
        def call(*args, **kwargs):
            nonlocal spent
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent += time.perf_counter() - started

        return call

    run.begin_stage = timed(run.begin_stage)  # type: ignore[method-assign]
    engine._stage_starts = timed(engine._stage_starts)  # type: ignore[method-assign]
    try:
        for _, event in engine.run_batch([run]):
            if isinstance(event, BaseException):
                raise event
    finally:
        del engine._stage_starts  # the class's again
    return spent


def unseen(engine: Engine, content: np.ndarray, style: np.ndarray, options: StyleOptions,
           way: Callable) -> tuple[float, float]:  # fmt: skip
    """Seconds to prepare a job and of its stage starts, its style unseen by the cache."""
    engine._cache = GramCache(engine._cache.max_bytes)
    seconds, run = prepared(engine, content, style, options, way)
    return seconds, stage_starts(engine, run)


def cached(engine: Engine, content: np.ndarray, style: np.ndarray, options: StyleOptions,
           way: Callable) -> tuple[float, int]:  # fmt: skip
    """Seconds to prepare a job whose style the cache holds, and the bytes of pixels it holds."""
    seconds, run = prepared(engine, content, style, options, way)
    assert not run.styles_px  # nothing to resize: the Grams are cached
    return seconds, held_bytes(run)


def timed(digest: Callable[[np.ndarray], str], image: np.ndarray) -> float:
    """Seconds of one key of ``image``."""
    started = time.perf_counter()
    digest(image)
    return time.perf_counter() - started


def rate(engine: Engine, jobs: list[tuple[np.ndarray, np.ndarray]], options: StyleOptions,
         threads: int) -> float:  # fmt: skip
    """Jobs ((content, style) pairs) prepared a second by ``threads`` at once, the cache empty."""
    engine._cache = GramCache(engine._cache.max_bytes)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda job: engine.prepare(job[0], [job[1]], options), jobs))
    return len(jobs) / (time.perf_counter() - started)


def content_table(engine: Engine, args: argparse.Namespace) -> None:
    style = samples.style()
    print(f"# Engine.prepare, the default preset (4 stages), the content's stages: "
          f"{describe('cpu')}")  # fmt: skip
    print("| content | result | from the photograph ms | from the finest stage ms | ratio "
          "| coarse stages apart: mean / max levels |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    old_way = using(each_from_the_photograph, STYLES_AHEAD)
    for side in args.sides:
        content = photograph(side)
        for size in args.sizes:
            options = StyleOptions.from_preset("default", size=size)
            runs = interleaved(
                {way: functools.partial(prepared, engine, content, style, options, way)
                 for way in (old_way, restore)}, args.repeats,
            )  # fmt: skip
            (_, before), (_, now) = runs[old_way][-1], runs[restore][-1]
            apart = [(a - b).abs() for a, b in zip(before.content_px[:-1], now.content_px[:-1])]
            assert torch.equal(before.content_px[-1], now.content_px[-1])
            mean = float(torch.cat([d.flatten() for d in apart]).mean()) if apart else 0.0
            worst = max((float(d.max()) for d in apart), default=0.0)
            a, b = (statistics.median(t for t, _ in runs[way]) * 1e3 for way in (old_way, restore))
            h, w = content.shape[:2]
            print(f"| {w}x{h} | {size} px | {a:.1f} | {b:.1f} | {a / b:.2f}x "
                  f"| {mean:.2f} / {worst:.1f} |")  # fmt: skip


def style_table(engine: Engine, args: argparse.Namespace) -> None:
    content = samples.content()
    print(f"\n# A style the cache has not seen, the default preset with 4 iterations (one a "
          f"stage): {describe('cpu')}")  # fmt: skip
    print("| style | result | prepare ms: before / now | stage starts ms: before / now "
          "| stage starts: ratio |")  # fmt: skip
    print("|---|---|---|---|---|")
    old_way = using(CONTENT_STAGES, none_ahead)
    for side in args.sides:
        style = painting(side)
        for size in args.sizes:
            options = StyleOptions.from_preset("default", size=size, iterations=4)
            times = interleaved(
                {name: functools.partial(unseen, engine, content, style, options, way)
                 for name, way in (("old", old_way), ("new", restore))}, args.repeats,
            )  # fmt: skip
            (p_old, s_old), (p_new, s_new) = (
                [statistics.median(t[i] for t in times[name]) * 1e3 for i in (0, 1)]
                for name in ("old", "new")
            )
            h, w = style.shape[:2]
            print(f"| {w}x{h} | {size} px | {p_old:.1f} / {p_new:.1f} | {s_old:.1f} / "
                  f"{s_new:.1f} | {s_old / s_new:.2f}x |")  # fmt: skip


def cached_style_table(engine: Engine, args: argparse.Namespace) -> None:
    print(f"\n# A content photograph and a style the cache holds, of one side, the default "
          f"preset with 4 iterations: {describe('cpu')}")  # fmt: skip
    print("| content and style | result | prepare ms: as before / the engine's way | ratio "
          "| MiB a prepared job holds: before / now |")  # fmt: skip
    print("|---|---|---|---|---|")
    for side in args.sides:
        content, style = photograph(side), painting(side)
        for size in args.sizes:
            options = StyleOptions.from_preset("default", size=size, iterations=4)
            stage_starts(engine, engine.prepare(content, [style], options))  # its Grams cached
            runs = interleaved(
                {name: functools.partial(cached, engine, content, style, options, way)
                 for name, way in (("old", converting_every_style), ("new", restore))},
                args.repeats,
            )  # fmt: skip
            old, new = (
                statistics.median(t for t, _ in runs[name]) * 1e3 for name in ("old", "new")
            )
            held = {name: runs[name][-1][1] for name in ("old", "new")}
            h, w = style.shape[:2]
            print(f"| {w}x{h} | {size} px | {old:.1f} / {new:.1f} | {old / new:.2f}x "
                  f"| {held['old'] / 2**20:.1f} / {held['new'] / 2**20:.1f} |")  # fmt: skip


def digest_table(args: argparse.Namespace) -> None:
    print(f"\n# The key the Gram cache files an image under: {describe('cpu')}")
    print("| image | blake2b ms (before) | sha256 ms (now) | ratio |")
    print("|---|---|---|---|")

    def blake2b(array: np.ndarray) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(str((array.shape, array.dtype.str)).encode())
        h.update(np.ascontiguousarray(array).data)
        return h.hexdigest()

    for side in args.sides:
        image = photograph(side)
        times = interleaved(
            {"old": functools.partial(timed, blake2b, image),
             "new": functools.partial(timed, _digest, image)}, args.repeats,
        )  # fmt: skip
        old, new = (statistics.median(times[name]) * 1e3 for name in ("old", "new"))
        h, w = image.shape[:2]
        print(f"| {w}x{h} | {old:.2f} | {new:.2f} | {old / new:.2f}x |")


def threads_table(engine: Engine, args: argparse.Namespace, jobs: int = 16) -> None:
    print(f"\n# Jobs prepared a second by threads at once, {jobs} jobs, each a content and a "
          f"style of its own, the default preset at {args.sizes[0]} px, the cache empty: "
          f"{describe('cpu')}")  # fmt: skip
    print("| content and style | " + " | ".join(f"{n} thread{'s' * (n > 1)}"
                                               for n in args.threads) + " |")  # fmt: skip
    print("|---|" + "---|" * len(args.threads))
    options = StyleOptions.from_preset("default", size=args.sizes[0])
    for side in args.sides:
        photo, style = photograph(side), painting(side)
        pairs = [(np.roll(photo, k, axis=1), np.roll(style, k, axis=1)) for k in range(jobs)]
        rates = interleaved(
            {n: functools.partial(rate, engine, pairs, options, n) for n in args.threads},
            args.repeats,
        )
        base = statistics.median(rates[args.threads[0]])
        cells = [f"{statistics.median(rates[n]):.1f} ({statistics.median(rates[n]) / base:.2f}x)"
                 for n in args.threads]  # fmt: skip
        h, w = photo.shape[:2]
        print(f"| {w}x{h} | " + " | ".join(cells) + " |")


def quality_table(engine: Engine, iterations: list[int]) -> None:
    from impasto_server.engine.yardstick import Yardstick

    content, style = samples.content(), samples.style(size=256)
    measure = None
    print(f"\n# The default preset at 256 px, the content's stages each way, distances by "
          f"the yardstick: {describe('cpu')}")  # fmt: skip
    print("| iterations | from the photograph: style / content | from the finest stage: "
          "style / content |")  # fmt: skip
    print("|---|---|---|")
    for count in iterations:
        cells = []
        for way in (using(each_from_the_photograph, STYLES_AHEAD), restore):
            options = StyleOptions.from_preset("default", size=256, iterations=count, seed=0)
            way()
            try:
                image = list(engine.run(content, [style], options))[-1].image
            finally:
                restore()
            measure = measure or Yardstick(content, style, image.shape[:2])
            content_distance, style_distance = measure(image)
            cells.append(f"{style_distance:.4g} / {content_distance:.4g}")
        print(f"| {count} | {cells[0]} | {cells[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", nargs="+", default=["512", "2048", "4032x3024"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", nargs="*", type=int, default=[])
    parser.add_argument("--quality", nargs="*", type=int, default=[])
    args = parser.parse_args()
    engine = Engine(device="cpu")
    content_table(engine, args)
    style_table(engine, args)
    cached_style_table(engine, args)
    digest_table(args)
    if args.threads:
        threads_table(engine, args)
    if args.quality:
        quality_table(engine, args.quality)


if __name__ == "__main__":
    main()
