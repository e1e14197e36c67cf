"""Numbers in the README that come from committed files are checked against those files."""

from __future__ import annotations

import json

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def load(rel: str):
    return json.loads((ROOT / rel).read_text())


def default_run_rows() -> list[str]:
    """The README's table of the default run: metrics/reference.json and metrics/noise.json."""
    ref, noise = load("metrics/reference.json")["models"], load("metrics/noise.json")["models"]
    rows = []
    for model in ("llama3", "gemma2"):
        r, n = ref[model], noise[model]
        rows.append(f"| {model} | {r['log_loss']:.4f} | {r['accuracy']:.4f} | {r['log_loss_prior']:.4f} "
                    f"| {n['log_loss']['mean']:.4f} ± {n['log_loss']['sd']:.4f} "
                    f"| {n['accuracy']['mean']:.4f} ± {n['accuracy']['sd']:.4f} | {n['n']} |")
    return rows


def cpu_repro_sentence() -> str:
    runs = {r["run"]: r for r in map(json.loads, (ROOT / "benchmarks/results/cpu-repro.jsonl").read_text().splitlines())
            if "run" in r}
    f64, f32 = runs["f64-native"], runs["f32-native"]
    diff = abs(f64["log_loss"] - f32["log_loss"])
    tolerance = load("metrics/reference.json")["tolerance"]
    return (f"log-loss {f64['log_loss']:.6f} in float64 and {f32['log_loss']:.6f} in float32 "
            f"({diff:.4f} apart): float32's rounding alone moves it {diff / tolerance:.1f} times the tolerance")


def test_other_kernels_leave_the_default_run_unchanged_to_6_decimals():
    """README "On another machine": the portable kernels (and MKL's reproducible path, float64) end
    where this CPU's do, for both models, in cpu-repro.jsonl."""
    runs = {r["run"]: r for r in map(json.loads, (ROOT / "benchmarks/results/cpu-repro.jsonl").read_text().splitlines())
            if "run" in r}
    assert {"f64-portable", "f64-portable-mkl", "f32-portable", "gemma2-f64-portable"} <= set(runs)
    assert "MKL_CBWR=COMPATIBLE" in runs["f64-portable-mkl"]["env"]
    assert {r["model"] for r in runs.values()} == {"llama3", "gemma2"}
    for name, run in runs.items():
        [base] = [r for r in runs.values() if (r["model"], r["dtype"], r["env"]) == (run["model"], run["dtype"],
                                                                                     "OMP_NUM_THREADS=1")]
        assert (run["log_loss"], run["accuracy"]) == (base["log_loss"], base["accuracy"]), name


def test_default_run_table_matches_the_committed_runs():
    for row in default_run_rows():
        assert row in README, f"README 'The default run' lacks the row\n{row}\n(from metrics/reference.json and metrics/noise.json)"


def test_cpu_repro_numbers_match_the_committed_results():
    assert cpu_repro_sentence() in README, cpu_repro_sentence()


def test_the_check_can_fail():
    rows = default_run_rows()
    assert rows[0].replace(rows[0].split("|")[2], " 9.9999 ") not in README


def test_pull_request_example_is_the_committed_comment():
    """The README's review example is docs/pr-review-example.md (made by scripts/pr_example.sh), quoted."""
    example = (ROOT / "docs" / "pr-review-example.md").read_text().strip().splitlines()
    quoted = "\n".join(f"> {line}".rstrip() for line in example if not line.startswith("<!--"))
    assert quoted in README, "README 'Pull-request review' does not quote docs/pr-review-example.md"
