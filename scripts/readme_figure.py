"""Compose content, style and result side by side for the README.

.venv/bin/python scripts/readme_figure.py out/stylized.png docs/images/result.png
"""

from __future__ import annotations

import sys

import numpy as np
from impasto import samples
from PIL import Image


def main() -> None:
    result_path, figure_path = sys.argv[1], sys.argv[2]
    result = Image.open(result_path).convert("RGB")
    height = result.height
    tiles = [
        Image.fromarray(samples.content()),
        Image.fromarray(samples.style()),
        result,
    ]
    tiles = [t.resize((round(t.width * height / t.height), height), Image.LANCZOS) for t in tiles]
    gap = 8
    figure = Image.new("RGB", (sum(t.width for t in tiles) + gap * 2, height), "white")
    x = 0
    for tile in tiles:
        figure.paste(tile, (x, 0))
        x += tile.width + gap
    figure.save(figure_path)
    print(
        f"wrote {figure_path} ({figure.width}x{figure.height}), mean {np.asarray(figure).mean():.1f}"
    )


if __name__ == "__main__":
    main()
