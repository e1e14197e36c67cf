"""A speed change inside the measured timing noise is marked as noise: in the PR comment (against
the runs' timed passes and the noise floor's seed runs) and in prefbench.compare's seed groups."""

import pytest

from prefbench.compare import EVAL, groups_markdown, noise_floor, seed_groups
from prefbench.pr_comment import noise_section

FLOOR = {"n": 5, "log_loss": {"mean": 0.95, "sd": 0.01}, "accuracy": {"mean": 0.5, "sd": 0.02}}


def speed_cells(diff: dict, current: dict, floor: dict = FLOOR) -> list[str]:
    lines = noise_section({EVAL: diff}, {"models": {"llama3": floor}}, {"model": "llama3", **current}, "main")
    (row,) = [line for line in lines if line.startswith("| seconds_per_sample |")]
    return [c.strip() for c in row.strip("|").split("|")]


@pytest.mark.parametrize("new,noise,verdict", [
    (0.0105, 0.1, "within noise"),  # +0.0005 s against passes spreading +-10%: 0.00105 + 0.001
    (0.0150, 0.1, "beyond noise (slower)"),
    (0.0080, 0.1, "beyond noise (faster)"),
    (0.0105, 0.0, "no timing noise measured"),
])
def test_speed_change_against_the_runs_timed_passes(new, noise, verdict):
    cells = speed_cells({"seconds_per_sample": {"old": 0.01, "new": new, "diff": new - 0.01}},
                        {"seconds_per_sample": new, "timing_noise": noise})
    assert cells[-1] == verdict
    assert float(cells[-2]) == pytest.approx(noise * (new + 0.01), abs=1e-5)


def test_speed_change_against_the_seed_runs_and_the_base_passes():
    floor = {**FLOOR, "seconds_per_sample": {"mean": 0.01, "sd": 0.003}}
    cells = speed_cells({"seconds_per_sample": {"old": 0.01, "new": 0.015, "diff": 0.005}},
                        {"seconds_per_sample": 0.015, "timing_noise": 0.0}, floor)
    assert cells[-3:] == ["0.01000 ± 0.00300 (5)", "0.00600", "within noise"]
    # the base's own spread (timing_noise changed, so dvc metrics diff lists its old value)
    cells = speed_cells({"seconds_per_sample": {"old": 0.01, "new": 0.015, "diff": 0.005},
                         "timing_noise": {"old": 0.6, "new": 0.0, "diff": -0.6}},
                        {"seconds_per_sample": 0.015, "timing_noise": 0.0})
    assert cells[-1] == "within noise"
    assert speed_cells({}, {"seconds_per_sample": 0.01, "timing_noise": 0.1})[-1] == "unchanged"


def exp(name, seed, log_loss, speed, **params):
    return {"experiment": name, "model": "llama3", "log_loss": log_loss, "accuracy": 0.5, "seconds_per_sample": speed,
            "baseline": "abc", "params": {"train.seed": seed, "data.seed": 42, **params}}


def test_compare_marks_speed_between_groups():
    exps = [exp("a0", 0, 1.0, 0.010), exp("a1", 1, 1.1, 0.012), exp("a2", 2, 1.2, 0.011),
            exp("b0", 0, 1.0, 0.0115, lr=2), exp("b1", 1, 1.1, 0.0125, lr=2),
            exp("c0", 0, 1.0, 0.030, lr=3), exp("c1", 1, 1.1, 0.031, lr=3)]
    groups = seed_groups(exps)
    rows = {line.split("|")[1].strip(): line for line in groups_markdown(groups).splitlines()[2:]}
    assert rows["lr=None"].split("|")[-3].strip() == "-"  # the model's first group: the reference
    assert rows["lr=2"].split("|")[-3].strip() == "within noise"  # +0.0009 s, 2 sd = 0.002
    assert rows["lr=3"].split("|")[-3].strip() == "beyond noise (slower)"
    floor = noise_floor(groups, "test")["models"]["llama3"]
    assert floor["n"] == 3 and floor["seconds_per_sample"] == {"mean": 0.011, "sd": 0.001}
