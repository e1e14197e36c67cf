"""CPU timing that can be compared: a fixed, recorded thread count and the median of several passes.

On a CPU, torch's default thread count is the machine's core count, and a pass over the rows with
two threads beside another busy process measured 8-15x slower than with one, varying run to run.
So on the CPU the timed predict loop runs with CPU_THREADS torch threads (PREFBENCH_CPU_THREADS
overrides it; eval.json and predict.json record it as `threads`) and CPU_PASSES times over the same
rows, and `seconds` is the median pass; `timing_noise` is the passes' half-range over their median
(0.1 = the passes spread +-10%), what `prefbench.pr_comment` judges a speed change against. On GPUs
one pass (the devices are synchronised and the warm-up is untimed) and torch's own thread count.
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

CPU_THREADS = 1  # torch threads for CPU inference: the same on any machine, and the least disturbed by others
CPU_PASSES = 3  # timed passes on the CPU; the median is reported


def on_cpu(devices) -> bool:
    return all(torch.device(d).type == "cpu" for d in devices)


def cpu_threads_setting() -> int:
    value = os.environ.get("PREFBENCH_CPU_THREADS", "")
    if not value:
        return CPU_THREADS
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"PREFBENCH_CPU_THREADS must be a whole number >= 1, got {value!r}")
    return int(value)


@contextmanager
def fixed_threads(devices) -> Iterator[int]:
    """On the CPU, torch's thread count set to cpu_threads_setting() inside, restored after; yields
    the count in effect (on GPUs, torch's own)."""
    if not on_cpu(devices):
        yield torch.get_num_threads()
        return
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads_setting())
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def timed_passes(run: Callable[[], object], passes: int) -> tuple[object, float, float]:
    """Run `run()` `passes` times; (its last result, the median seconds of a pass, timing noise:
    the passes' half-range over their median, 0 for one pass)."""
    times, result = [], None
    for _ in range(passes):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return result, median, (max(times) - min(times)) / 2 / median if median > 0 else 0.0


def passes_for(devices) -> int:
    return CPU_PASSES if on_cpu(devices) else 1


def defaults() -> dict:
    """The timing keys of a predict loop that sets none of them (tfidf's: scikit-learn, one pass,
    torch's thread count recorded though its model does not use torch)."""
    return {"threads": torch.get_num_threads(), "timing_passes": 1, "timing_noise": 0.0}
