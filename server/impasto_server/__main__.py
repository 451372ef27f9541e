"""``python -m impasto_server`` and the ``impasto-server`` command."""

from __future__ import annotations

import sys

from impasto_server.app import main

if __name__ == "__main__":
    sys.exit(main())
