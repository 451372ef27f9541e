"""impasto_server: the gRPC server that keeps a warm VGG19 and runs style-transfer jobs."""

from __future__ import annotations

from impasto import __version__

__all__ = ["__version__"]
