"""The stage scripts' entry: expected failures (bad input, bad params) end with one clear line, not
a trace."""

from __future__ import annotations

import sys
from typing import Callable

from prefbench.config import ParamsError
from prefbench.data import DataError

# Bad input or bad params: the message names the file, row and column, or the params key.
EXPECTED = (DataError, ParamsError)


def run(main: Callable[[], None]) -> None:
    """Run a stage's main; an EXPECTED error prints `error: <message>` on stderr and exits 2."""
    try:
        main()
    except EXPECTED as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
