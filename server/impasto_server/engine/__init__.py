"""The style-transfer engine: pure PyTorch, no knowledge of gRPC."""

from .events import Progress, Result
from .memory import InsufficientMemory, MemoryPlan
from .options import (
    LAYER_NAMES,
    PRESETS,
    Cancelled,
    EngineError,
    StyleOptions,
)
from .transfer import Engine, is_out_of_memory

__all__ = [
    "LAYER_NAMES", "PRESETS", "Cancelled", "Engine", "EngineError", "InsufficientMemory",
    "MemoryPlan", "Progress", "Result", "StyleOptions", "is_out_of_memory",
]  # fmt: skip
