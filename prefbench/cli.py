"""Helpers for the stage scripts: expected failures end with one clear line, not a trace; progress
suits where it is read (a bar on a terminal, a few plain lines in a log)."""

from __future__ import annotations

import sys
from typing import Callable

from tqdm import tqdm

from prefbench.config import ParamsError
from prefbench.data import DataError
from prefbench.files import OutputError, no_space_reason

# Bad input or bad params: the message names the file, row and column, or the params key.
EXPECTED = (DataError, ParamsError)

LOG_LINES = 10  # lines a loop writes into a log (plus its first), whatever its length
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def run(main: Callable[[], None]) -> None:
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


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    return hasattr(stream, "isatty") and stream.isatty()


class LogLines(tqdm):
    """tqdm for a log (CI, `dvc repro > log`, `dvc queue logs`): one plain line at the start and
    about every 1/LOG_LINES of the loop, each with count, elapsed, remaining time and the average
    rate. A bar redraws itself with carriage returns, and a log keeps every redraw."""

    _shown = -1  # n at the last line written

    def __init__(self, *args, **kwargs):
        # leave=False: close() then asks display() to clear the bar, which writes the last line instead.
        # smoothing=0: the rate is the average since the start, not of the last few updates.
        super().__init__(*args, **{**kwargs, "leave": False, "mininterval": 0, "smoothing": 0,
                                   "bar_format": LOG_FORMAT})

    def display(self, msg=None, pos=None):
        closing = msg == ""
        every = max(1, -(-(self.total or 0) // LOG_LINES))  # ceil: at most LOG_LINES more lines
        due = self._shown < 0 or closing or self.n - self._shown >= every or self.n == self.total
        if due and self.n != self._shown:
            self._shown = self.n
            self.fp.write(f"{self}\n")
            self.fp.flush()
        return False  # nothing on screen to clear


def progress(iterable=None, *, total: int | None = None, desc: str, unit: str, **kwargs) -> tqdm:
    """The progress display of every loop: a tqdm bar on a terminal, LogLines otherwise (the
    stream is kwargs["file"], default stderr as tqdm's). Other kwargs go to tqdm."""
    cls = tqdm if is_terminal(kwargs.get("file")) else LogLines
    return cls(iterable, total=total, desc=desc, unit=unit, **kwargs)
