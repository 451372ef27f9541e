from __future__ import annotations

import numpy as np
import pytest
from impasto import samples
from impasto_server.engine import Engine


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine(device="cpu")


@pytest.fixture(scope="session")
def content() -> np.ndarray:
    return samples.content("astronaut")[::4, ::4].copy()  # 128 x 128 RGB uint8


@pytest.fixture(scope="session")
def style() -> np.ndarray:
    return samples.style(size=96)


def stripes(color_a, color_b, size: int = 96, period: int = 8, vertical: bool = True) -> np.ndarray:
    """A style of hard-edged stripes in two colours."""
    y, x = np.mgrid[:size, :size]
    phase = (x if vertical else y) // (period // 2) % 2
    return np.where(phase[..., None] == 0, np.array(color_a), np.array(color_b)).astype(np.uint8)


@pytest.fixture(scope="session")
def red_style() -> np.ndarray:
    return stripes((230, 30, 30), (120, 0, 0))


@pytest.fixture(scope="session")
def blue_style() -> np.ndarray:
    return stripes((30, 60, 230), (0, 0, 110), vertical=False)
