"""One smoke test per stage, on a small generated data set and the tiny models, run as DVC runs them."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from safetensors import safe_open

from prefbench.sample import COLUMNS
from tests.conftest import ROOT


def run_stage(name: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module", params=["llama3", "gemma2"])
def pipeline(request, tmp_path_factory):
    """Run every stage once for one model; yields the folder with all outputs."""
    tmp = tmp_path_factory.mktemp(request.param)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] = request.param
    raw["sample"]["rows"] = 150
    raw["train"]["epochs"] = 1
    for cfg in (c for c in raw["models"].values() if "kind" not in c):  # the LLM entries (tfidf: `kind`)
        cfg["pretrained"] = str(ROOT / cfg["pretrained"])
        cfg["max_length"] = 96
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    p = ["--params", str(params)]
    raw["sample"]["test_rows"] = 40
    params.write_text(yaml.safe_dump(raw))
    out = {"sample": run_stage("sample", *p, "--out", str(tmp / "train.csv"), "--test-out", str(tmp / "test.csv"))}
    out["prepare"] = run_stage("prepare", *p, "--csv", str(tmp / "train.csv"), "--out", str(tmp / "prepared"),
                               "--metrics", str(tmp / "data.json"))
    out["tokenize"] = run_stage("tokenize", *p, "--prepared", str(tmp / "prepared"), "--out", str(tmp / "tokens"),
                                "--metrics", str(tmp / "tokens.json"))
    out["train"] = run_stage("train", *p, "--tokens", str(tmp / "tokens"), "--out", str(tmp / "adapter"),
                             "--metrics", str(tmp / "train.json"), "--live", str(tmp / "live"))
    out["evaluate"] = run_stage("evaluate", *p, "--tokens", str(tmp / "tokens"), "--adapter", str(tmp / "adapter"),
                                "--metrics", str(tmp / "eval.json"), "--predictions", str(tmp / "pred.csv"),
                                "--calibration", str(tmp / "cal.csv"),
                                "--speed-accuracy", str(tmp / "speed_accuracy.json"))
    out["predict"] = run_stage("predict", *p, "--test-csv", str(tmp / "test.csv"), "--adapter", str(tmp / "adapter"),
                               "--out", str(tmp / "submission.csv"), "--metrics", str(tmp / "predict.json"))
    return request.param, tmp, out


def load(path):
    return json.loads(path.read_text())


def test_sample_stage_writes_competition_format(pipeline):
    _, tmp, out = pipeline
    df = pd.read_csv(tmp / "train.csv")
    assert list(df.columns) == COLUMNS and len(df) == 150
    assert "150 rows" in out["sample"]


def test_prepare_stage_counts_every_row(pipeline):
    _, tmp, _ = pipeline
    m = load(tmp / "data.json")
    assert m["rows_read"] == 150
    assert m["rows_kept"] + m["rows_dropped"] == 150 == m["rows_kept"] + sum(m["dropped"].values())
    assert m["train_rows"] + m["val_rows"] == m["rows_kept"]
    train = pd.read_parquet(tmp / "prepared" / "train.parquet")
    assert set(train.columns) >= {"id", "prompt", "response_a", "response_b", "label"}


def test_tokenize_stage_respects_max_length(pipeline):
    model, tmp, _ = pipeline
    m = load(tmp / "tokens.json")
    assert m["model"] == model and m["max_length"] == 96
    assert m["train"]["max"] <= 96 and 0 < m["train"]["share_truncated"] < 1
    meta = load(tmp / "tokens" / "meta.json")
    assert meta["pad_token_id"] is not None


def test_train_stage_saves_lora_and_score_head(pipeline):
    model, tmp, out = pipeline
    m = load(tmp / "train.json")
    assert 0 < m["params_trainable"] < m["params_total"]
    assert m["steps"] > 0 and m["seconds_per_sample"] > 0 and m["tokens_per_second"] > 0
    with safe_open(str(tmp / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in k for k in keys) and any("score" in k for k in keys)
    assert (tmp / "live" / "plots" / "metrics" / "train" / "loss.tsv").exists()
    assert "trainable" in out["train"]


def test_evaluate_stage_metrics(pipeline):
    model, tmp, out = pipeline
    m = load(tmp / "eval.json")
    for key in ("log_loss", "accuracy", "seconds_per_sample", "samples_per_second", "tokens_per_second",
                "load_seconds", "peak_memory_gb", "params_total", "params_embedding", "params_non_embedding",
                "params_trainable", "n_samples", "device", "dtype", "attn_implementation", "weights"):
        assert key in m, key
    assert m["model"] == model and m["device"] == "cpu" and m["dtype"] == "float64"
    assert m["params_embedding"] + m["params_non_embedding"] == m["params_total"]
    assert m["params_trainable"] == load(tmp / "train.json")["params_trainable"]
    pred = pd.read_csv(tmp / "pred.csv")
    assert len(pred) == m["n_samples"]
    assert ((pred[["p_a", "p_b", "p_tie"]].sum(axis=1) - 1).abs() < 1e-4).all()


def test_predict_stage_writes_a_kaggle_submission(pipeline):
    model, tmp, out = pipeline
    test = pd.read_csv(tmp / "test.csv")
    assert list(test.columns) == ["id", "prompt", "response_a", "response_b"]
    sub = pd.read_csv(tmp / "submission.csv")
    assert list(sub.columns) == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert sub["id"].tolist() == test["id"].tolist()  # input order
    assert ((sub.iloc[:, 1:].sum(axis=1) - 1).abs() < 1e-5).all()
    m = load(tmp / "predict.json")
    assert m["n_samples"] == 40 and m["swap_tta"] is True and m["kaggle_rows"] == 25000
    assert m["projected_hours"] == pytest.approx(m["seconds_per_sample"] * 25000 / 3600, rel=1e-3)
    assert "Kaggle limit 9" in out["predict"]


def test_swap_tta_is_symmetric(pipeline):
    """With swap TTA, exchanging A and B in test.csv must exchange the two winner columns."""
    model, tmp, _ = pipeline
    test = pd.read_csv(tmp / "test.csv")
    swapped = test.rename(columns={"response_a": "response_b", "response_b": "response_a"})[test.columns]
    swapped.to_csv(tmp / "test_swapped.csv", index=False)
    run_stage("predict", "--params", str(tmp / "params.yaml"), "--test-csv", str(tmp / "test_swapped.csv"),
              "--adapter", str(tmp / "adapter"), "--out", str(tmp / "sub_swapped.csv"),
              "--metrics", str(tmp / "predict_swapped.json"))
    a, b = pd.read_csv(tmp / "submission.csv"), pd.read_csv(tmp / "sub_swapped.csv")
    assert (a["winner_model_a"] - b["winner_model_b"]).abs().max() < 2e-6
    assert (a["winner_tie"] - b["winner_tie"]).abs().max() < 2e-6
