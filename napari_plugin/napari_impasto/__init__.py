"""napari plugin for impasto: neural style transfer on a local or remote impasto server.

It talks to servers only through ``impasto.client`` and never imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ImpastoWidget"]


def __getattr__(name: str) -> Any:
    # Importing the package (npe2 reads the manifest through it) must not import Qt.
    if name == "ImpastoWidget":
        from napari_impasto.widget import ImpastoWidget

        return ImpastoWidget
    raise AttributeError(name)
