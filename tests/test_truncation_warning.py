"""The tokenize stage says so when most rows are cut to max_length, naming the key to raise, and
counts it in tokens.json; with room for the rows it says nothing."""

from __future__ import annotations

import json

import yaml

from prefbench.sample import generate_arena_sample
from tests import forked
from tests.conftest import ROOT
from tests.test_stages import run_stage


def tokenize(tmp, max_length: int):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["models"]["llama3"].update(pretrained=str(ROOT / raw["models"]["llama3"]["pretrained"]), max_length=max_length)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    p = ["--params", str(tmp / "params.yaml")]
    if not (tmp / "prepared").exists():
        generate_arena_sample(60, 0).to_csv(tmp / "train.csv", index=False)
        run_stage("prepare", *p, "--csv", str(tmp / "train.csv"), "--out", str(tmp / "prepared"),
                  "--metrics", str(tmp / "data.json"))
    proc = forked.run("-m", "stages.tokenize", *p, "--prepared", tmp / "prepared", "--out", tmp / "tokens",
                      "--metrics", tmp / "tokens.json", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr, json.loads((tmp / "tokens.json").read_text())


def test_most_rows_truncated_warns_and_counts(tmp_path):
    err, m = tokenize(tmp_path, 64)
    assert m["truncation_warning"] is True
    for split in ("train", "val"):
        assert m[split]["rows_truncated"] == round(m[split]["share_truncated"] * m[split]["rows"])
    assert "tokenize: warning:" in err and "models.llama3.max_length = 64 tokens" in err
    assert "raise models.llama3.max_length" in err
    err, m = tokenize(tmp_path, 4096)
    assert m["truncation_warning"] is False and "warning" not in err
    assert max(m[s]["share_truncated"] for s in ("train", "val")) <= 0.5
