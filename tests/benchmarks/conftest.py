"""The benchmark scripts' modules, imported as the scripts import each other (from their folder)."""

from __future__ import annotations

import os
import sys

import pytest

BENCHMARKS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"
)


@pytest.fixture(scope="module")
def gpu():
    """benchmarks/gpu.py as a module."""
    sys.path.insert(0, BENCHMARKS)
    try:
        import gpu

        yield gpu
    finally:
        sys.path.remove(BENCHMARKS)
