"""prefbench.blend: weights fitted on validation log-loss over the simplex, never worse than the best
member on the fitting rows; members whose rows, labels or columns differ are refused naming the
first mismatch; and the command over two real runs of the session's shared pipeline run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from prefbench.blend import (BlendError, Member, blend, cross_validated_log_loss, fit_weights, mix,
                             validation_arrays)
from prefbench.data import LABEL_COLUMNS, LABEL_NAMES
from prefbench.metrics import log_loss
from tests import forked


def random_probs(rng, n: int, sharpness: float) -> np.ndarray:
    p = rng.dirichlet(np.ones(3), size=n) ** sharpness
    return p / p.sum(axis=1, keepdims=True)


def frame(ids, labels, probs) -> pd.DataFrame:
    """A metrics/predictions.csv as the evaluate stage writes it (6 decimals)."""
    df = pd.DataFrame({"id": [str(i) for i in ids], "actual": [LABEL_NAMES[y] for y in labels],
                       "predicted": [LABEL_NAMES[k] for k in probs.argmax(axis=1)]})
    for k, name in enumerate(LABEL_NAMES):
        df[f"p_{name}"] = probs[:, k].round(6)
    return df


def submission(ids, probs) -> pd.DataFrame:
    return pd.DataFrame({"id": [str(i) for i in ids], **{c: probs[:, k].round(6) for k, c in enumerate(LABEL_COLUMNS)}})


def members_of(labels, probs_list, test=None) -> list[Member]:
    ids = np.arange(1000, 1000 + len(labels))
    return [Member(f"m{k}", frame(ids, labels, p), None if test is None else test[k]) for k, p in enumerate(probs_list)]


@pytest.mark.parametrize("seed", range(12))
def test_the_fitted_blend_is_never_above_the_best_member(seed):
    """Random members (2 to 4; some sharp, some near uniform, some informed by the labels): the
    fitted blend's log-loss on the fitting rows is at most the best member's, weights on the simplex."""
    rng = np.random.default_rng(seed)
    n, k = 200, 2 + seed % 3
    labels = rng.integers(0, 3, n)
    probs = []
    for j in range(k):
        p = random_probs(rng, n, sharpness=rng.uniform(0.2, 3))
        informed = rng.uniform(0, 0.6)  # mass moved onto the true label: some members know something
        p = (1 - informed) * p + informed * np.eye(3)[labels]
        probs.append(p)
    labels_, arrays = validation_arrays(members_of(labels, probs))
    w = fit_weights(labels_, arrays)
    assert np.all(w >= 0) and w.sum() == pytest.approx(1, abs=1e-9)
    best = min(log_loss(labels_, p) for p in arrays)
    assert log_loss(labels_, mix(arrays, w)) <= best


def test_complementary_members_blend_below_both():
    """Each member is sure and right on its half of the rows and unsure on the other half: the
    blend beats both, with weights near one half each."""
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 3, n)
    half = np.arange(n) < n // 2
    sure, unsure = 0.8 * np.eye(3)[labels] + 0.2 / 3, np.full((n, 3), 1 / 3)
    a = np.where(half[:, None], sure, unsure)
    b = np.where(half[:, None], unsure, sure)
    result, sub = blend(members_of(labels, [a, b]))
    assert result["log_loss"] < result["best_member_log_loss"] - 0.05
    assert [m["weight"] for m in result["members"]] == pytest.approx([0.5, 0.5], abs=0.02)
    assert result["log_loss_cv"] < result["best_member_log_loss"] and sub is None


def test_a_useless_member_gets_no_weight_and_the_blend_is_the_best_member():
    """A member worse than another everywhere (here: the other's probabilities flattened) gets
    weight 0 at the vertex, and the blend's log-loss equals the best member's exactly."""
    rng = np.random.default_rng(1)
    n = 300
    labels = rng.integers(0, 3, n)
    good = 0.7 * np.eye(3)[labels] + 0.3 * random_probs(rng, n, 1)
    bad = np.eye(3)[(labels + 1) % 3] * 0.9 + 0.1 / 3  # confidently wrong
    result, _ = blend(members_of(labels, [bad, good]))
    assert [m["weight"] for m in result["members"]] == [0.0, 1.0]
    assert result["log_loss"] == result["best_member_log_loss"] == result["members"][1]["log_loss"]
    assert result["best_member"] == "m1"


def test_average_takes_equal_weights_and_its_cv_is_its_log_loss():
    rng = np.random.default_rng(2)
    n = 120
    labels = rng.integers(0, 3, n)
    probs = [random_probs(rng, n, 1.0) for _ in range(3)]
    members = members_of(labels, probs)
    result, _ = blend(members, average=True)
    assert [m["weight"] for m in result["members"]] == pytest.approx([1 / 3] * 3)
    _, arrays = validation_arrays(members)
    expected = log_loss(labels, sum(arrays) / 3)
    assert result["log_loss"] == pytest.approx(expected, abs=1e-12)
    assert result["log_loss_cv"] == pytest.approx(expected, abs=1e-12)  # no fit: nothing to leak


def test_cross_validated_log_loss_fits_each_fold_on_the_other():
    """Out-of-fold: a member that is right only on the rows of one fold cannot be weighted up
    from that fold's own rows, so the cross-validated log-loss is above the in-sample fit's."""
    rng = np.random.default_rng(3)
    n = 300
    labels = rng.integers(0, 3, n)
    probs = [random_probs(rng, n, 1.0) for _ in range(3)]
    _, arrays = validation_arrays(members_of(labels, probs))
    in_sample = log_loss(labels, mix(arrays, fit_weights(labels, arrays)))
    cv, fold_weights = cross_validated_log_loss(labels, arrays, folds=2, average=False)
    assert len(fold_weights) == 2 and all(sum(w) == pytest.approx(1) for w in fold_weights)
    assert cv > in_sample  # noise members: the in-sample fit is optimistic


def test_the_blended_submission_mixes_the_test_predictions_with_the_weights():
    rng = np.random.default_rng(4)
    n, t = 100, 7
    labels = rng.integers(0, 3, n)
    probs = [0.5 * np.eye(3)[labels] + 0.5 * random_probs(rng, n, 1), random_probs(rng, n, 1)]
    tests = [random_probs(rng, t, 1) for _ in range(2)]
    test_ids = rng.permutation(10**6)[:t]
    members = members_of(labels, probs, [submission(test_ids, p) for p in tests])
    result, sub = blend(members)
    w = [m["weight"] for m in result["members"]]
    assert list(sub.columns) == ["id", *LABEL_COLUMNS] and list(sub["id"]) == [str(i) for i in test_ids]
    expected = w[0] * tests[0].round(6) + w[1] * tests[1].round(6)
    np.testing.assert_allclose(sub[list(LABEL_COLUMNS)].to_numpy(), expected / expected.sum(axis=1, keepdims=True),
                               atol=1e-5)
    assert result["test_rows"] == t and all(m["test_predictions"] for m in result["members"])


def refusal(members) -> str:
    with pytest.raises(BlendError) as err:
        blend(members)
    return str(err.value)


@pytest.fixture
def two():
    rng = np.random.default_rng(5)
    n = 20
    labels = rng.integers(0, 3, n)
    tests = [submission(range(5), random_probs(rng, 5, 1)) for _ in range(2)]
    return members_of(labels, [random_probs(rng, n, 1) for _ in range(2)], tests)


def test_refuses_other_validation_rows_naming_member_row_id_and_column(two):
    two[1].validation.loc[3, "id"] = "999"
    msg = refusal(two)
    assert "member m1" in msg and "row id 999 (row 4)" in msg and "column id" in msg and "'1003'" in msg


def test_refuses_other_labels(two):
    old = two[1].validation.loc[5, "actual"]
    two[1].validation.loc[5, "actual"] = next(n for n in LABEL_NAMES if n != old)
    msg = refusal(two)
    assert "member m1" in msg and "row id 1005" in msg and "column actual" in msg


def test_refuses_a_missing_row(two):
    two[1].validation = two[1].validation.iloc[:-1]
    msg = refusal(two)
    assert "member m1" in msg and "row id 1019 (row 20) is missing" in msg


def test_refuses_another_label_order(two):
    v = two[0].validation
    two[0].validation = v[["id", "actual", "predicted", "p_b", "p_a", "p_tie"]]
    msg = refusal(two)
    assert "member m0" in msg and "column 4 is 'p_b', expected 'p_a'" in msg


def test_refuses_a_value_that_is_not_a_probability(two):
    two[1].validation.loc[2, "p_tie"] = 1.5
    msg = refusal(two)
    assert "member m1" in msg and "row id 1002, column p_tie" in msg


def test_refuses_other_test_rows(two):
    two[1].test.loc[0, "id"] = "77"
    msg = refusal(two)
    assert "member m1: data/submission.csv" in msg and "row id 77 (row 1), column id" in msg


def test_refuses_one_member_and_a_name_twice(two):
    assert "two or more members" in refusal(two[:1])
    two[1].name = "m0"
    assert "member m0 is named twice" in refusal(two)


def test_without_a_members_test_predictions_there_is_no_submission(two):
    two[0].test, two[0].test_missing = None, "data/submission.csv of m0 is not in this DVC cache"
    result, sub = blend(two)
    assert sub is None and result["test_rows"] is None
    assert result["members"][0]["test_missing"].endswith("not in this DVC cache")


@pytest.mark.xdist_group("workspace")
def test_blend_of_two_real_runs(workspace, tmp_path):
    """`python -m prefbench.blend` in the session's second copy: the committed llama3 default run
    (HEAD) with the gemma2 experiment, then the gemma2 experiment with a queued llama3 experiment
    (noise_floor.sh's), read through DVC's API at their revisions."""
    ws = workspace["second"]
    ws.check()
    queued = sorted(exp["name"] for commit in ws.json("exp-show-queue.json") for exp in commit.get("experiments") or []
                    if (exp.get("name") or "").startswith("nf-"))
    assert queued, ws.tail()
    out = tmp_path / "blend.json"
    proc = forked.run("-m", "prefbench.blend", "HEAD", "gemma2-exp", "--metrics", out, "--out", tmp_path / "sub.csv",
                      cwd=ws.repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    members = {m["name"]: m for m in result["members"]}
    assert [m["model"] for m in result["members"]] == ["llama3", "gemma2"]
    gemma = json.loads((ws.logs / "gemma2" / "metrics" / "eval.json").read_text())
    assert members["gemma2-exp"]["log_loss"] == pytest.approx(gemma["log_loss"], abs=1e-5)  # (6-decimal CSV)
    assert result["rows"] == gemma["n_samples"]
    assert result["log_loss"] <= min(m["log_loss"] for m in result["members"])
    assert all(len(m["rev"]) == 40 for m in result["members"]) and "optimistic" in proc.stdout
    # HEAD's submission was never made in this copy (only its data stages ran): no blended file
    assert result["submission"] is None and not (tmp_path / "sub.csv").exists()
    assert "HEAD is not in this DVC cache" in members["HEAD"]["test_missing"], members["HEAD"]

    proc = forked.run("-m", "prefbench.blend", "gemma2-exp", queued[0], "--metrics", out, "--out",
                      tmp_path / "sub.csv", cwd=ws.repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["log_loss"] <= result["best_member_log_loss"]
    sub = pd.read_csv(tmp_path / "sub.csv")
    gemma_sub = pd.read_csv(ws.logs / "gemma2" / "submission.csv")
    assert list(sub["id"]) == list(gemma_sub["id"]) and result["test_rows"] == len(sub)
    assert np.allclose(sub[list(LABEL_COLUMNS)].sum(axis=1), 1, atol=1e-5)
    if result["members"][0]["weight"] == 1.0:  # the gemma2 vertex: its submission, to the rounding
        np.testing.assert_allclose(sub[list(LABEL_COLUMNS)], gemma_sub[list(LABEL_COLUMNS)], atol=2e-6)

    # A bundle of this blend reads each member's params and trained model at its commit (the
    # queued experiment's from the cache its worker filled); members of weight 0 are left out.
    from prefbench.bundle import members_from_blend

    members = members_from_blend(out, tmp_path / "members", ws.repo)
    weighted = [m for m in result["members"] if m["weight"] > 0]
    assert [(m.name, m.weight, m.rev) for m in members] == [(m["name"], m["weight"], m["rev"]) for m in weighted]
    for m in members:
        model = yaml.safe_load(m.params.read_text())["model"]
        assert model == {"gemma2-exp": "gemma2"}.get(m.name, "llama3")
        assert (m.adapter / "resolved_params.json").is_file()
        if m.name == "gemma2-exp":  # the experiment's own adapter, byte for byte
            snap = ws.logs / "gemma2" / "adapter"  # (tests/workspace.py: snap copies models/adapter as adapter/)
            assert sorted(f.name for f in m.adapter.iterdir()) == sorted(f.name for f in snap.iterdir())
            assert all((m.adapter / f.name).read_bytes() == f.read_bytes() for f in snap.iterdir())
