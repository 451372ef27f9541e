"""What a benchmark ran on, for the first line of its table (imported by the scripts beside it)."""

from __future__ import annotations

import platform
import time

import torch


def device_name(device: str) -> str:
    """The GPU's name for a CUDA device, else the processor's."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


def describe(device: str) -> str:
    """'DEVICE (NAME), torch VERSION, N threads, DATE'."""
    return (f"{device} ({device_name(device)}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")  # fmt: skip
