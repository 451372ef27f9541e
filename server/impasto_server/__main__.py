"""``python -m impasto_server`` and the ``impasto-server`` command."""

from __future__ import annotations

import sys

# The server's own packages come with the ``server`` extra; the base install is a client.
_OWN = ("impasto", "impasto_server")


def main() -> int:
    try:
        from impasto_server.app import main as serve
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if not package or package in _OWN:
            raise  # a module of impasto's own missing: a broken install, not a missing extra
        print(
            f"impasto-server: error: this Python lacks the server's packages (no module "
            f"{package!r}): pip install 'impasto[server]'",
            file=sys.stderr,
        )
        return 2
    return serve()


if __name__ == "__main__":
    sys.exit(main())
