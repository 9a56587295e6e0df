"""``exosphere`` / ``python -m exosphere``: the command line, or which extra to install when it is missing."""

from __future__ import annotations

import importlib.util
import sys

# The command line's own dependencies (the `cli` extra), beyond the SDK's.
CLI_MODULES = ("rich", "yaml")


def main() -> None:
    """Run the ``exosphere`` command line (``exosphere.cli``)."""
    missing = [name for name in CLI_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        names = ", ".join(missing)
        sys.exit(f"exosphere: the command line needs the 'cli' extra: pip install 'exosphere[cli]' (missing: {names})")
    from exosphere.cli import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
