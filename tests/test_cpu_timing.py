"""CPU timings that compare: the evaluate stage times the median of several passes with a fixed
torch thread count, records both (`threads`, `timing_passes`, `timing_noise` in eval.json), and
gives the thread count back afterwards. Delays advance the clocks (tests/test_timing.py's Clock)."""

import math

import pytest
import torch

import prefbench.infer
from prefbench import timing
from tests.test_resume import tokens  # noqa: F401  (a fixture)
from tests.test_timing import PER_BATCH, Clock, adapter, run_evaluate  # noqa: F401  (adapter: a fixture)


def test_median_pass_and_fixed_threads_are_recorded(monkeypatch, adapter, tokens):  # noqa: F811
    params, out = adapter
    clock = Clock(monkeypatch)
    seen_threads, collate = [], prefbench.infer.collate

    def slow_collate(*args, **kwargs):
        seen_threads.append(torch.get_num_threads())
        clock.advance(PER_BATCH * len(seen_threads))  # each call slower than the one before
        return collate(*args, **kwargs)

    monkeypatch.setattr(prefbench.infer, "collate", slow_collate)
    monkeypatch.setenv("PREFBENCH_CPU_THREADS", "1")
    torch.set_num_threads(2)
    m = run_evaluate(monkeypatch, params, tokens, out)
    assert torch.get_num_threads() == 2  # given back
    assert m["threads"] == 1 and set(seen_threads) == {1}  # warm-up and timed passes alike
    passes, batches = m["timing_passes"], math.ceil(m["n_samples"] / m["batch_size"])
    assert passes == timing.CPU_PASSES >= 3
    warmup = len(seen_threads) - passes * batches
    # pass k's delays: calls warmup + k*batches + 1 .. warmup + (k+1)*batches; passes get slower, so the median is the middle one
    pass_s = [PER_BATCH * sum(range(warmup + k * batches + 1, warmup + (k + 1) * batches + 1)) for k in range(passes)]
    median = pass_s[passes // 2]
    assert median <= m["predict_seconds"] < median + 0.5 * PER_BATCH
    assert m["timing_noise"] == pytest.approx((pass_s[-1] - pass_s[0]) / 2 / median, rel=1e-3)


def test_thread_setting_is_checked(monkeypatch):
    monkeypatch.setenv("PREFBENCH_CPU_THREADS", "two")
    with pytest.raises(ValueError, match="PREFBENCH_CPU_THREADS must be a whole number >= 1, got 'two'"):
        timing.cpu_threads_setting()
