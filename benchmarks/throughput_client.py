"""One client of gpu.py's server-throughput rows, in a process of its own: real clients do not
share the server's interpreter (and its lock) as threads of the benchmark's process would.

    python benchmarks/throughput_client.py ADDRESS JOBS SIZE ITERATIONS OPTIMIZER [INPUT_SIDE]
                                           [STYLE_SIDE]

SIZE may be a comma-separated list: the jobs then ask for each size in turn.

Prints "ready" once connected, waits for a line on stdin, sends JOBS jobs one after another,
then prints as JSON the batch size each job ran in, the CPU seconds the process used for
them, and when it began and ended sending them (its first job sent, its last result in; the
machine's clock, which its peers share). The content is the sample photograph (512 x 512), or
INPUT_SIDE x INPUT_SIDE pixels of it resized (a phone's photograph is some 4000 pixels a side).
The style is the sample style drawn at SIZE, the same for every job; with STYLE_SIDE above 0,
each job sends a style of its own (the sample style drawn at up to 512 px and resized to
STYLE_SIDE, shifted by a different number of columns), which the server's cache has not seen.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from PIL import Image


def square(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` resized to ``side`` x ``side`` pixels."""
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC))


def main() -> None:
    address, jobs, size, iterations, optimizer = sys.argv[1:6]
    from impasto import samples
    from impasto.client import Client, Started

    sizes = [int(side) for side in size.split(",")]
    content, style = samples.content(), samples.style(size=max(sizes))
    if len(sys.argv) > 6 and int(sys.argv[6]) != content.shape[0]:
        content = square(content, int(sys.argv[6]))
    styles = [style] * int(jobs)
    if len(sys.argv) > 7 and int(sys.argv[7]) > 0:
        side = int(sys.argv[7])  # drawn at 512 px at most (drawing takes seconds), then resized
        drawn = square(samples.style(size=min(side, 512)), side)
        shifts = np.random.default_rng(os.getpid()).choice(drawn.shape[1], int(jobs), False)
        styles = [np.ascontiguousarray(np.roll(drawn, int(k), axis=1)) for k in shifts]
    with Client(address) as client:
        client.server_info()  # connected, and the server answers
        print("ready", flush=True)
        sys.stdin.readline()
        cpu, start = time.process_time(), time.time()
        batch_sizes = []
        for i, style in enumerate(styles):
            side = sizes[i % len(sizes)]
            job = client.stylize(content, [style], size=side, iterations=int(iterations),
                                 num_scales=1, seed=0, optimizer=optimizer)  # fmt: skip
            for event in job:
                if isinstance(event, Started):
                    batch_sizes.append(event.batch_size)
        cpu, end = time.process_time() - cpu, time.time()
    report = {"batch_sizes": batch_sizes, "cpu_seconds": cpu, "start": start, "end": end}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
