"""The stage scripts' entry: expected failures (bad input, bad params) end with one clear line, not
a trace."""

from __future__ import annotations

import sys
from typing import Callable

from prefbench.config import ParamsError
from prefbench.data import DataError
from prefbench.files import OutputError, no_space_reason

# Bad input or bad params: the message names the file, row and column, or the params key.
EXPECTED = (DataError, ParamsError)


def run(main: Callable[[], None]) -> None:
    """Run a stage's main; an EXPECTED error prints `error: <message>` on stderr and exits 2."""
    try:
        main()
    except EXPECTED as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OutputError as e:  # no space for an output (prefbench.files.atomic_path names it)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # a write outside atomic_path refused for want of space: still one line
        reason = no_space_reason(e)
        if reason is None:
            raise
        where = getattr(e, "filename", None) or "an output"
        print(f"error: could not write {where}: {reason} (the disk is full, or a file size limit was reached): "
              f"free some space and run the stage again", file=sys.stderr)
        sys.exit(1)

