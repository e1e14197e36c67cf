"""The tfidf baseline: one smoke test per stage as DVC runs them, its params, its no-pickle model,
and the README's baseline numbers against the committed results."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from prefbench.config import ParamsError, TfidfParams, parse_params
from prefbench.data import read_test_csv
from prefbench.infer import run_inference
from prefbench.metrics import softmax
from prefbench.tfidf import Classifier, Featuriser, fit_classifier, read_features
from tests.conftest import ROOT

pytestmark = pytest.mark.xdist_group("workspace")

RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture
def run(workspace):
    """The tfidf run of every stage, as `dvc exp run -S model=tfidf` ran them in the session's
    shared run (tests/workspace.py)."""
    return workspace["native"].run_of("tfidf")


def load(path):
    return json.loads(path.read_text())


def test_tokenize_stage_caches_the_fitted_features(run):
    m, data = run.metrics("tokens.json"), run.metrics("data.json")
    most = run.params["models"]["tfidf"]["max_features"]
    assert m["model"] == "tfidf" and 0 < m["features"]["word"] <= most and 0 < m["features"]["char"] <= most
    assert m["train"]["rows"] == data["train_rows"] and m["val"]["rows"] == data["val_rows"]
    assert m["train"]["columns"] == m["val"]["columns"]
    # The cache is the featuriser's output: reloaded from its files, it gives the cached val matrix.
    ids, labels, x, _ = read_features(run.dir / "tokens" / "val.safetensors")
    val = pd.read_parquet(run.repo / "data" / "prepared" / "val.parquet")
    again, _ = Featuriser.load(run.dir / "tokens").transform(val)
    assert ids == val["id"].tolist() and labels.tolist() == val["label"].tolist()
    assert abs(again - x).max() == 0


def test_train_stage_writes_coefficients_as_safetensors_and_json(run):
    files = sorted(p.name for p in (run.dir / "adapter").iterdir())
    assert files == ["classifier.safetensors", "featuriser.json", "featuriser.safetensors", "resolved_params.json"]
    m = run.metrics("train.json")
    columns = run.metrics("tokens.json")["train"]["columns"]
    assert m["params_total"] == 3 * columns + 3  # a weight per class and column, an intercept per class
    assert m["final_loss"] < 1.0986  # it fitted something (uniform: ln 3)
    assert (run.dir / "dvclive" / "metrics.json").is_file()  # dvc.yaml's dvclive output exists for this kind too


def test_reloaded_classifier_is_sklearns(run):
    """Coefficients from safetensors, no pickle: the same probabilities as the fitted estimator."""
    cfg = TfidfParams(**{k: v for k, v in load(run.dir / "adapter" / "resolved_params.json")["models"].items()})
    _, labels, x, _ = read_features(run.dir / "tokens" / "train.safetensors")
    _, _, xv, _ = read_features(run.dir / "tokens" / "val.safetensors")
    fitted = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter).fit(x, labels)
    clf = Classifier.load(run.dir / "adapter")
    np.testing.assert_allclose(softmax(clf.logits(xv)), fitted.predict_proba(xv), atol=1e-6)
    coef, _ = fit_classifier(x, labels, cfg)
    np.testing.assert_array_equal(coef, clf.coef)  # lbfgs is deterministic: train is reproducible


def test_evaluate_stage_writes_the_llm_metrics_and_beats_the_prior(run):
    m = run.metrics("eval.json")
    llm = load(ROOT / "metrics" / "eval.json")  # the committed default (LLM) run
    assert set(llm) <= set(m), sorted(set(llm) - set(m))
    assert m["model"] == "tfidf" and m["weights"] == "fitted"
    assert m["log_loss"] < m["log_loss_prior"], (m["log_loss"], m["log_loss_prior"])
    assert m["params_total"] == run.metrics("train.json")["params_total"] and m["seconds_per_sample"] > 0
    assert len(pd.read_csv(run.dir / "metrics" / "predictions.csv")) == m["n_samples"]
    (point,) = run.metrics("speed_accuracy.json")
    assert point["model"] == "tfidf" and point["log_loss"] == m["log_loss"]
    assert "evaluate: tfidf (fitted) log_loss" in run.out


def test_predict_stage_submission_with_swap_tta(run):
    sub = pd.read_csv(run.dir / "submission.csv")
    test = pd.read_csv(run.repo / "data" / "sample" / "test.csv")
    assert list(sub.columns) == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert sub["id"].tolist() == test["id"].tolist()
    np.testing.assert_allclose(sub.iloc[:, 1:].sum(axis=1), 1.0, atol=3e-6)
    m = run.metrics("predict.json")
    assert set(load(ROOT / "metrics" / "predict.json")) <= set(m) and m["swap_tta"] is True
    assert m["featurise_seconds"] > 0


def test_swap_tta_is_symmetric(run):
    """With swap TTA, exchanging responses A and B in the input exchanges the a and b columns."""
    params = parse_params(run.params)
    df, _ = read_test_csv(run.repo / "data" / "sample" / "test.csv")
    swapped = df.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    p = run_inference(params, "predict", run.dir / "adapter", df, swap_tta=True).probs
    q = run_inference(params, "predict", run.dir / "adapter", swapped, swap_tta=True).probs
    np.testing.assert_allclose(p, q[:, [1, 0, 2]], atol=1e-12)
    assert np.abs(p[:, 0] - p[:, 1]).max() > 1e-4  # and it does tell A from B


@pytest.mark.parametrize("change, message", [
    (lambda e: e.pop("C"), "missing params key: models.tfidf.C"),
    (lambda e: e.update(pretrained="models/tiny-llama3"), "unknown params key: models.tfidf.pretrained"),
    (lambda e: e.update(kind="lightgbm"), "models.tfidf.kind: 'lightgbm' is not one of tfidf"),
    (lambda e: e.update(max_features="many"), "models.tfidf.max_features: expected int"),
    (lambda e: e.update(char_ngram_max=1), "models.tfidf.char_ngram_max must be >= 2"),
])
def test_tfidf_params_are_typed(change, message):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    change(raw["models"]["tfidf"])
    with pytest.raises(ParamsError, match=re.escape(message)):
        parse_params(raw)


def test_tfidf_is_selected_like_the_llms():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] = "tfidf"
    params = parse_params(raw)
    assert isinstance(params.selected, TfidfParams) and params.selected.kind == "tfidf"


# ---------------------------------------------------------------- committed results and the README

def results(name):
    data = load(RESULTS / name)
    assert data["command"].startswith("dvc exp run -S model=tfidf"), data["command"]
    return data


def test_committed_baseline_beats_the_prior_on_real_and_generated_data():
    real, generated = results("tfidf-arena-sample.json"), results("tfidf-generated.json")
    assert "arena_train_sample.csv" in real["command"]
    for run in (real, generated):
        ev = run["metrics/eval.json"]
        assert ev["model"] == "tfidf" and ev["log_loss"] < ev["log_loss_prior"], ev
    assert real["metrics/data.json"]["rows_read"] == 999


def test_compare_takes_the_baseline_with_the_llms():
    """prefbench.compare (dvc exp show --json): one entry each for the committed tfidf run and the
    committed LLM default run, with the metrics its seed groups read."""
    from prefbench.compare import NOISE_METRICS, experiments

    def exp_show_entry(name, metrics):
        return {"rev": name, "name": name, "data": {"rev": name, "metrics": {"metrics/eval.json": {"data": metrics}}}}

    tfidf = results("tfidf-arena-sample.json")["metrics/eval.json"]
    llm = load(ROOT / "metrics" / "eval.json")
    exps = experiments([exp_show_entry("main", llm), exp_show_entry("tfidf", tfidf)])
    assert [(e["experiment"], e["model"]) for e in exps] == [("main", "llama3"), ("tfidf", "tfidf")]
    assert [[e[m] for m in NOISE_METRICS] for e in exps] == [[llm[m] for m in NOISE_METRICS],
                                                             [tfidf[m] for m in NOISE_METRICS]]
