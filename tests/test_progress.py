"""Progress output: a redrawn bar on a terminal, a few plain lines in a log."""

import io

import pytest

from prefbench.progress import LOG_LINES, progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("total", [3, 10, 37, 1000])
def test_a_log_gets_a_few_plain_lines_with_the_rate(total):
    log = io.StringIO()
    with progress(total=total, desc="train", unit="step", file=log) as bar:
        for i in range(total):
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (i + 1):.4f}")  # as train does: must not add lines of its own
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert min(total + 1, LOG_LINES) <= len(lines) <= LOG_LINES + 2
    counts = [int(line.split()[1].split("/")[0]) for line in lines]
    assert counts == sorted(set(counts))  # one line per position, in order: set_postfix adds none
    assert lines[0].startswith(f"train: 0/{total} (0%)")
    assert lines[-1].startswith(f"train: {total}/{total} (100%)") and "step/s" in lines[-1]
    assert "loss=" in lines[-1]


def test_a_log_of_an_iterable_or_a_resumed_loop_ends_with_its_total():
    log = io.StringIO()
    assert list(progress(range(25), desc="tokenize", unit="batch", file=log)) == list(range(25))
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("tokenize: 0/25") and lines[-1].startswith("tokenize: 25/25 (100%)")
    log = io.StringIO()
    with progress(total=100, initial=60, desc="train", unit="step", file=log) as bar:
        bar.update(40)
    assert log.getvalue().splitlines()[0].startswith("train: 60/100")
    assert log.getvalue().splitlines()[-1].startswith("train: 100/100")


def test_a_terminal_gets_a_bar_and_a_disabled_loop_nothing():
    term = Terminal()
    with progress(total=5, desc="train", unit="step", file=term, mininterval=0) as bar:
        for _ in range(5):
            bar.update(1)
    assert term.getvalue().count("\r") >= 5 and "100%|" in term.getvalue()  # redrawn in place
    log = io.StringIO()
    with progress(total=5, desc="train", unit="step", file=log, disable=True) as bar:
        bar.update(5)
    assert log.getvalue() == ""
