"""The style-transfer engine: pure PyTorch, no knowledge of gRPC."""

from .events import Progress, Result
from .options import (
    LAYER_NAMES,
    PRESETS,
    Cancelled,
    EngineError,
    StyleOptions,
)
from .transfer import Engine

__all__ = [
    "LAYER_NAMES", "PRESETS", "Cancelled", "Engine", "EngineError", "Progress", "Result",
    "StyleOptions",
]  # fmt: skip
