"""A bad params value fails the `dvc exp run` that set it, even for a model that is not selected
(no other stage reads its entry), and an unknown model lists the valid ones: the `params` stage
checks all of params.yaml ahead of every other stage, before DVC removes any output."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests import gitcopy
from tests.conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
OK = STAGES["params"]["outs"][0]


def test_params_stage_reads_the_whole_file_and_runs_first():
    assert STAGES["params"]["params"] == [{"params.yaml": None}]  # every key: any -S runs the stage
    assert "-m stages.params" in STAGES["params"]["cmd"]
    late = [name for name, stage in STAGES.items() if name != "params" and OK not in stage.get("deps", [])]
    assert not late, f"stages {late} do not depend on {OK}: they could run before the params are checked"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return gitcopy.git_copy(tmp_path_factory.mktemp("params-stage"))


@pytest.mark.parametrize("setting,message", [
    ("models.gemma2.max_length=long", "error: models.gemma2.max_length: expected int, got 'long'"),
    ("model=phi3", "error: model: unknown model 'phi3'; valid: gemma2, llama3, mistral, qwen2, tfidf"),
])
def test_bad_value_fails_the_run_that_set_it(repo, setting, message):
    """llama3 is selected, so no stage but `params` reads models.gemma2; DVC's own message for an
    unknown model would be "Parameters 'models.phi3' are missing"."""
    proc = subprocess.run([gitcopy.dvc(), "exp", "run", "-S", setting], cwd=repo, capture_output=True, text=True,
                          env=gitcopy.warm_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out, out[-3000:]
    assert "Running stage 'sample'" not in out
    status = gitcopy.sh("git", "status", "--porcelain", cwd=repo)
    assert [line for line in status.splitlines() if not line.endswith("params.yaml")] == [], status
    gitcopy.sh("git", "checkout", "params.yaml", cwd=repo)
