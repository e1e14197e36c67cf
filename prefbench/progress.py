"""Progress of a loop, suited to where it is read: a tqdm bar on a terminal, a few plain lines in a
log (CI, `dvc repro > log`, `dvc queue logs`)."""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_LINES = 10  # lines a loop writes into a log (plus its first), whatever its length
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


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
