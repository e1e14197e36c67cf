"""One smoke test per stage, on the default generated data set and the tiny models, as DVC ran them
(the session's shared run, tests/workspace.py)."""

import json
import os

import pandas as pd
import pytest
from safetensors import safe_open

from prefbench.sample import COLUMNS
from tests import forked
from tests.conftest import ROOT
from tests.workspace import run_of

pytestmark = pytest.mark.xdist_group("workspace")


def run_stage(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    """`python -m stages.<name> args` (a forked interpreter: tests/forked.py), with `env` added to
    this process's environment; its stdout."""
    proc = forked.run("-m", f"stages.{name}", *args, cwd=ROOT, env={**os.environ, **env} if env else None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(params=["llama3", "gemma2", "qwen2", "mistral"])
def pipeline(request, workspace):
    """One model's run of every stage, as `make repro` / `dvc exp run` ran them in the session's
    shared run (tests/workspace.py)."""
    return run_of(workspace, request.param)


def load(path):
    return json.loads(path.read_text())


def test_sample_stage_writes_competition_format(workspace):
    run = workspace["native"].run_of("llama3")
    rows = run.params["sample"]["rows"]
    df = pd.read_csv(run.repo / "data" / "sample" / "train.csv")
    assert list(df.columns) == COLUMNS and len(df) == rows
    assert f"{rows} rows" in run.out


def test_prepare_stage_counts_every_row(workspace):
    """Counts against the files themselves: every row of the CSV is kept (in train or val) or
    dropped with a reason."""
    run = workspace["native"].run_of("llama3")
    m = run.metrics("data.json")
    csv_rows = len(pd.read_csv(run.repo / "data" / "sample" / "train.csv"))
    train = pd.read_parquet(run.repo / "data" / "prepared" / "train.parquet")
    val = pd.read_parquet(run.repo / "data" / "prepared" / "val.parquet")
    assert m["rows_read"] == csv_rows
    assert (m["train_rows"], m["val_rows"]) == (len(train), len(val))
    assert len(train) + len(val) + sum(m["dropped"].values()) == csv_rows
    assert set(train.columns) >= {"id", "prompt", "response_a", "response_b", "label"}
    assert not set(train["id"]) & set(val["id"])


def test_tokenize_stage_respects_max_length(pipeline):
    max_length = pipeline.params["models"][pipeline.model]["max_length"]
    m = pipeline.metrics("tokens.json")
    assert m["model"] == pipeline.model and m["max_length"] == max_length
    assert m["train"]["max"] <= max_length and 0 < m["train"]["share_truncated"] < 1
    meta = load(pipeline.dir / "tokens" / "meta.json")
    assert meta["pad_token_id"] is not None and meta["max_length"] == max_length


def test_train_stage_saves_lora_and_score_head(pipeline):
    m = pipeline.metrics("train.json")
    assert 0 < m["params_trainable"] < m["params_total"]
    assert m["steps"] > 0 and m["seconds_per_sample"] > 0 and m["tokens_per_second"] > 0
    with safe_open(str(pipeline.dir / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in k for k in keys) and any("score" in k for k in keys)
    assert (pipeline.dir / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").exists()
    assert "trainable" in pipeline.out


def test_evaluate_stage_metrics(pipeline):
    m = pipeline.metrics("eval.json")
    for key in ("log_loss", "accuracy", "seconds_per_sample", "samples_per_second", "tokens_per_second",
                "load_seconds", "peak_memory_gb", "params_total", "params_embedding", "params_non_embedding",
                "params_trainable", "n_samples", "device", "dtype", "attn_implementation", "weights"):
        assert key in m, key
    assert m["model"] == pipeline.model and m["device"] == "cpu" and m["dtype"] == "float64"
    # the embedding parameters are the input embedding matrix of the model's own config
    config = load(ROOT / pipeline.params["models"][pipeline.model]["pretrained"] / "config.json")
    assert m["params_embedding"] == config["vocab_size"] * config["hidden_size"]
    assert m["params_trainable"] == pipeline.metrics("train.json")["params_trainable"]
    pred = pd.read_csv(pipeline.dir / "metrics" / "predictions.csv")
    assert len(pred) == m["n_samples"] == len(pd.read_parquet(pipeline.repo / "data" / "prepared" / "val.parquet"))
    assert ((pred[["p_a", "p_b", "p_tie"]].sum(axis=1) - 1).abs() < 1e-4).all()


def test_predict_stage_writes_a_kaggle_submission(pipeline):
    test = pd.read_csv(pipeline.repo / "data" / "sample" / "test.csv")
    assert list(test.columns) == ["id", "prompt", "response_a", "response_b"]
    sub = pd.read_csv(pipeline.dir / "submission.csv")
    assert list(sub.columns) == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert sub["id"].tolist() == test["id"].tolist()  # input order
    assert ((sub.iloc[:, 1:].sum(axis=1) - 1).abs() < 1e-5).all()
    m = pipeline.metrics("predict.json")
    assert m["n_samples"] == len(test) and m["swap_tta"] is True and m["kaggle_rows"] == 25000
    assert f"{m['projected_hours']:.2f} h" in pipeline.out and "Kaggle limit 9" in pipeline.out


def test_swap_tta_is_symmetric(pipeline, tmp_path):
    """With swap TTA, exchanging A and B in test.csv must exchange the two winner columns (every
    4th row of the run's test.csv, 50 of 200: the property is per row, and rows are batched by
    length whatever the file)."""
    test = pd.read_csv(pipeline.repo / "data" / "sample" / "test.csv").iloc[::4]
    swapped = test.rename(columns={"response_a": "response_b", "response_b": "response_a"})[test.columns]
    swapped.to_csv(tmp_path / "test_swapped.csv", index=False)
    run_stage("predict", "--params", str(pipeline.dir / "params.yaml"), "--test-csv", str(tmp_path / "test_swapped.csv"),
              "--adapter", str(pipeline.dir / "adapter"), "--out", str(tmp_path / "sub_swapped.csv"),
              "--metrics", str(tmp_path / "predict_swapped.json"))
    b = pd.read_csv(tmp_path / "sub_swapped.csv")
    a = pd.read_csv(pipeline.dir / "submission.csv").set_index("id").loc[b["id"]].reset_index()
    assert len(b) == len(test) and (a["winner_model_a"] - b["winner_model_b"]).abs().max() < 2e-6
    assert (a["winner_tie"] - b["winner_tie"]).abs().max() < 2e-6
