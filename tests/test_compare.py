import copy
import json
import math
import statistics

import pytest

from prefbench.compare import experiments, groups_markdown, noise_floor, seed_groups
from tests import forked
from tests.conftest import ROOT
from tests.gitcopy import git_commit, git_copy, sh, warm_env
from tests.workspace import QUEUE_EPOCHS


def real_exp_show():
    # `dvc exp show --json` as DVC 3.67 wrote it on a GPU run of both full-size models
    return json.loads((ROOT / "tests" / "data" / "exp-show-gpu.json").read_text())


def test_flattens_baseline_and_experiments():
    exps = experiments(real_exp_show())
    names = {e["experiment"]: e for e in exps}
    assert set(names) == {"main", "gpu-llama3", "gpu-gemma2", "gpu-gemma2-4bit"}
    assert names["gpu-gemma2-4bit"]["quantization"] == "4bit"
    assert names["gpu-llama3"]["params_total"] == 7_504_936_960


def seeded(exp_row: dict, name: str, seeds: dict, **metrics) -> dict:
    """A copy of one experiment of the real `dvc exp show --json`, with other seeds and metrics."""
    rev = copy.deepcopy(exp_row)
    rev["name"] = name
    data = rev["data"]
    for key, value in seeds.items():
        section, param = key.split(".")
        data["params"]["params.yaml"]["data"][section][param] = value
    data["metrics"]["metrics/eval.json"]["data"].update(metrics)
    return rev


def test_seed_groups_report_mean_and_sample_sd_per_group():
    rows = real_exp_show()
    commit = rows[1]  # the baseline commit; its experiments follow
    by_name = {e["name"]: e for e in commit["experiments"]}
    llama, gemma = by_name["gpu-llama3"]["revs"][0], by_name["gpu-gemma2"]["revs"][0]
    revs = [seeded(llama, "l-t1", {"train.seed": 1}, log_loss=1.0, accuracy=0.5),
            seeded(llama, "l-t2", {"train.seed": 2}, log_loss=1.2, accuracy=0.4),
            seeded(llama, "l-d7", {"data.seed": 7}, log_loss=1.1, accuracy=0.6),
            seeded(llama, "l-d7-again", {"data.seed": 7}, log_loss=1.1, accuracy=0.6),  # same seeds: counted once
            seeded(llama, "l-lr", {"train.learning_rate": 0.5}, log_loss=9.0, accuracy=0.1),  # not a seed
            seeded(gemma, "g-t1", {"train.seed": 1}, log_loss=0.8, accuracy=0.7)]
    commit["experiments"] += [{"name": r["name"], "revs": [r]} for r in revs]
    exps = experiments(rows)
    groups = {g["model"]: g for g in seed_groups(exps)}
    llama_group = groups["llama3"]
    values = [by_name["gpu-llama3"]["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"]["log_loss"],
              1.0, 1.2, 1.1]
    assert sorted(llama_group["experiments"]) == sorted(["gpu-llama3", "l-t1", "l-t2", "l-d7-again"])
    assert llama_group["n"] == 4 and sorted(llama_group["log_loss"]["values"]) == sorted(values)
    assert math.isclose(llama_group["log_loss"]["mean"], sum(values) / 4)
    sd = math.sqrt(sum((v - sum(values) / 4) ** 2 for v in values) / 3)  # ddof=1
    assert math.isclose(llama_group["log_loss"]["sd"], sd)
    assert groups["gemma2"]["n"] == 2  # gpu-gemma2 and g-t1; gpu-gemma2-4bit differs in quantization
    md = groups_markdown(list(groups.values()))
    assert f"{sum(values) / 4:.4f} ± {sd:.4f}" in md and "train.seed, data.seed" in md
    floor = noise_floor(list(groups.values()), "python -m prefbench.compare --noise-out x.json")
    assert floor["models"]["llama3"]["log_loss"]["sd"] == round(sd, 6) and floor["models"]["llama3"]["n"] == 4
    assert {"train.seed": 2, "data.seed": 42} in floor["models"]["llama3"]["seeds"]


def test_dvc_runs_beside_prefbench_python(tmp_path, monkeypatch):
    """prefbench.compare.dvc (the noise floor's and the PR comment's DVC calls) runs `$PREFBENCH_PYTHON
    -m dvc ARGS` where that is set, as scripts/python.sh takes it for the stages; a failing command
    exits naming it and its status."""
    from prefbench.compare import dvc

    argv = tmp_path / "argv"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$@" > {argv}\necho output\n[ "$3" = fail ] && exit 3\nexit 0\n')
    python.chmod(0o755)
    monkeypatch.setenv("PREFBENCH_PYTHON", str(python))
    assert dvc("exp", "show", "--json") == "output\n"
    assert argv.read_text().split() == ["-m", "dvc", "exp", "show", "--json"]
    with pytest.raises(SystemExit, match="dvc fail exited 3"):
        dvc("fail")


def test_command_prints_the_seed_groups_writes_the_noise_floor_and_needs_a_group(tmp_path):
    """`python -m prefbench.compare --json ... --noise-out ...`: the seed-group table on stdout and
    metrics/noise.json's content; without a seed group it fails saying so."""
    rows = real_exp_show()
    (tmp_path / "none.json").write_text(json.dumps(rows))  # four runs, no two differing only in seeds
    proc = forked.run("-m", "prefbench.compare", "--json", tmp_path / "none.json")
    assert proc.returncode != 0 and "no seed group" in proc.stderr and "4 experiments" in proc.stderr
    commit = rows[1]
    llama = next(e for e in commit["experiments"] if e["name"] == "gpu-llama3")["revs"][0]
    commit["experiments"].append({"name": "l-t1", "revs": [seeded(llama, "l-t1", {"train.seed": 1}, log_loss=1.0)]})
    (tmp_path / "exp.json").write_text(json.dumps(rows))
    out = tmp_path / "noise" / "noise.json"
    proc = forked.run("-m", "prefbench.compare", "--json", tmp_path / "exp.json", "--noise-out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    assert "| - | llama3 | 2 |" in stdout and str(out) in stdout
    noise = json.loads(out.read_text())
    assert list(noise["models"]) == ["llama3"] and noise["models"]["llama3"]["n"] == 2
    assert noise["command"].startswith("python -m prefbench.compare --json ")


@pytest.mark.xdist_group("workspace")
def test_noise_floor_script_feeds_the_pr_comment(workspace, tmp_path):
    """benchmarks/noise_floor.sh for real in the session's shared run (llama3, train.seed 1 and 2,
    two small queued experiments, two workers); then the PR comment judges seed 1 -> seed 2
    against the file. With n = 2 the two runs differ by sqrt(2) sd, always within the 2 sd of noise."""
    ws = workspace["second"]
    assert "| llama3 | 2 |" in ws.log("9-noise")  # the seed-group table

    # the same numbers straight from `dvc exp show --json`
    evals = {}
    for commit in ws.json("exp-show-queue.json"):
        for exp in commit.get("experiments") or []:
            data = exp["revs"][0]["data"]
            params = data["params"]["params.yaml"]["data"]
            if params["train"]["epochs"] == QUEUE_EPOCHS:  # the queued ones (QUEUE_SET)
                evals[params["train"]["seed"]] = data["metrics"]["metrics/eval.json"]["data"]
    assert sorted(evals) == [1, 2]
    noise = ws.json("noise.json")
    floor = noise["models"]["llama3"]
    head = sh("git", "rev-parse", "--short", "HEAD", cwd=ws.repo).strip()  # the commit the seeds were queued on
    assert noise["command"].startswith(f"python -m prefbench.compare --rev {head} --experiments nf-")
    assert noise["command"].endswith(" --noise-out metrics/noise.json")
    assert floor["n"] == 2 and sorted(s["train.seed"] for s in floor["seeds"]) == [1, 2]
    for metric in ("log_loss", "accuracy"):
        values = [evals[seed][metric] for seed in (1, 2)]
        assert floor[metric]["mean"] == pytest.approx(statistics.mean(values), abs=1e-6)
        assert floor[metric]["sd"] == pytest.approx(statistics.stdev(values), abs=1e-6)
    assert evals[1]["log_loss"] != evals[2]["log_loss"]

    # base: seed 1's run and the noise file, committed; workspace: seed 2's run
    repo = git_copy(tmp_path / "repo")
    (repo / "metrics" / "noise.json").write_text(json.dumps(noise))
    for seed in (1, 2):
        (repo / "metrics" / "eval.json").write_text(json.dumps(evals[seed]))
        if seed == 1:
            git_commit(repo, "seed 1 and its noise floor")
    # on the session's warm server, its DVC calls too ($PREFBENCH_PYTHON: prefbench.compare.dvc)
    proc = forked.run("-m", "prefbench.pr_comment", "--base", "main", cwd=repo,
                      env=warm_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = proc.stdout
    (line,) = [line for line in body.splitlines() if line.startswith("| log_loss |")]
    assert line.endswith("| within noise |") and f"({floor['n']})" in line, body


def test_a_failed_experiment_is_left_out():
    """`dvc exp show --json` lists a failed experiment with its own params but its baseline's
    metrics (seen: a killed gemma2 run reporting llama3's); it must not join any seed group."""
    from prefbench.compare import experiments, seed_groups

    def rev(name, model, seed, log_loss, error=None):
        data = {"rev": name, "params": {"params.yaml": {"data": {"model": model, "train": {"seed": seed}}}},
                "metrics": {"metrics/eval.json": {"data": {"model": model, "log_loss": log_loss, "accuracy": 0.5}}}}
        return {"rev": name, "name": name, "error": error, "data": data}

    base = rev("base", "llama3", 0, 1.0)
    failed = rev("failed", "gemma2", 1, 1.0, error={"msg": "Experiment run failed", "type": ""})
    failed["data"]["metrics"]["metrics/eval.json"]["data"]["model"] = "llama3"  # the baseline's
    rows = [{**base, "experiments": [{"revs": [rev("g0", "gemma2", 0, 0.9)]}, {"revs": [rev("g2", "gemma2", 2, 0.95)]},
                                     {"revs": [failed]}]}]
    names = [e["experiment"] for e in experiments(rows)]
    assert names == ["base", "g0", "g2"]
    (group,) = seed_groups(experiments(rows))
    assert group["model"] == "gemma2" and group["n"] == 2
