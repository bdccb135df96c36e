"""`python -m twin` and the `twin` console script."""

from __future__ import annotations

import sys

from twin.cli import main


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
