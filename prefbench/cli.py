"""Entry-point helper for the stage scripts: expected failures end with one clear line, not a trace."""

from __future__ import annotations

import sys
from typing import Callable

from prefbench.config import ParamsError
from prefbench.data import DataError

# Bad input or bad params: the message names the file, row and column, or the params key.
EXPECTED = (DataError, ParamsError)


def run(main: Callable[[], None]) -> None:
    try:
        main()
    except EXPECTED as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
