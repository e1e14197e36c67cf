"""The Kaggle hand-off: `python -m prefbench.bundle`, installed into a fresh venv with no network and
no repo checkout, gives the predict stage's submission.csv, for the tiny Llama3 and for tfidf; a
blend's bundle (the tiny Llama3 and Gemma2) gives their predict stages' submissions mixed with the
weights.

The fresh venv has no pip and no packages of its own: a .pth file puts this venv's site-packages
(torch, transformers, ...: the "wheels" Kaggle already has) on its path, but not this checkout
(the editable install's finder lives in a .pth file there, and .pth files of a directory added by
a .pth line are not run). prefbench and stages come only from the bundle's wheel, installed with the
bundle README's `pip install --no-index --find-links wheels prefbench`, and predict.py runs from a
temporary folder outside the repo, where importing dvc or dvclive fails. The bundles here are made
with --no-wheels (the wheels of the packages Kaggle lacks come from an index: not in tests).
"""

import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests import forked
from tests.conftest import ROOT
from tests.test_stages import run_stage


def llm_params(raw):
    raw["model"] = "llama3"
    raw["sample"].update(rows=80, test_rows=16)
    raw["train"]["epochs"] = 1
    for cfg in (c for c in raw["models"].values() if "kind" not in c):
        cfg["pretrained"] = str(ROOT / cfg["pretrained"])
        cfg["max_length"] = 64


def tfidf_params(raw):
    raw["model"] = "tfidf"
    raw["sample"].update(rows=120, test_rows=24)
    raw["models"]["tfidf"].update(max_features=300, char_ngram_max=3)


# model -> its folder, trained once per test process: the blend test reuses the llama3 of `trained`
TRAINED: dict[str, Path] = {}


def train(name: str, tmp_path_factory) -> Path:
    """sample -> prepare -> tokenize -> train -> predict for one model; its folder. gemma2 is
    trained on llama3's generated and prepared rows (in llama3's folder, under gemma2/): a blend's
    members share their data."""
    if name in TRAINED:
        return TRAINED[name]
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tfidf_params if name == "tfidf" else llm_params)(raw)
    if name == "gemma2":
        data = train("llama3", tmp_path_factory)
        tmp = data / "gemma2"
        tmp.mkdir()
        raw["model"] = "gemma2"
    else:
        tmp = data = tmp_path_factory.mktemp(f"bundle-{name}")
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    p = ["--params", str(tmp / "params.yaml")]
    if name != "gemma2":
        run_stage("sample", *p, "--out", str(tmp / "train.csv"), "--test-out", str(tmp / "test.csv"))
        run_stage("prepare", *p, "--csv", str(tmp / "train.csv"), "--out", str(tmp / "prepared"),
                  "--metrics", str(tmp / "data.json"))
    run_stage("tokenize", *p, "--prepared", str(data / "prepared"), "--out", str(tmp / "tokens"),
              "--metrics", str(tmp / "tokens.json"))
    run_stage("train", *p, "--tokens", str(tmp / "tokens"), "--out", str(tmp / "adapter"),
              "--metrics", str(tmp / "train.json"), "--live", str(tmp / "live"))
    run_stage("predict", *p, "--test-csv", str(data / "test.csv"), "--adapter", str(tmp / "adapter"),
              "--out", str(tmp / "submission.csv"), "--metrics", str(tmp / "predict.json"))
    TRAINED[name] = tmp
    return tmp


@pytest.fixture(scope="module", params=["llama3", "tfidf"])
def trained(request, tmp_path_factory):
    """sample -> prepare -> tokenize -> train -> predict for one model; its folder."""
    return request.param, train(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv without pip or packages; the heavy dependencies through a .pth file."""
    path = tmp_path_factory.mktemp("venv") / "kaggle"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "kaggle-image.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for name in ("dvc", "dvclive"):  # ahead of the .pth's path: predict must not need the pipeline's tools
        Path(purelib, f"{name}.py").write_text(f"raise ImportError('{name} imported by the predict path')\n")
    return python


def offline_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PIP_NO_INDEX": "1"}


def in_venv(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True, env=offline_env())
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def bundled(trained):
    """The bundle of `trained`, made once per model (pip wheel takes a while)."""
    return make_bundle(trained, trained[1] / "bundle")


def make_bundle(trained, out: Path) -> Path:
    name, tmp = trained
    extra = ["--copy-base"] if name == "llama3" else []
    proc = forked.run("-m", "prefbench.bundle", "--out", out, "--params", tmp / "params.yaml", "--adapter",
                      tmp / "adapter", "--no-wheels", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def install(venv: Path, bundle: Path, cwd: Path) -> None:
    """The bundle README's install, offline; --force-reinstall --no-deps because this checkout's
    editable prefbench (the same version) shows through the .pth; `pip check` then checks the wheel's
    requirements (no dvc) against what the venv sees."""
    pip = [sys.executable, "-m", "pip", "--python", str(venv)]
    for args in (["install", "-q", "--no-index", "--find-links", str(bundle / "wheels"), "--force-reinstall",
                  "--no-deps", "prefbench"], ["check"]):
        proc = subprocess.run([*pip, *args], cwd=cwd, capture_output=True, text=True, env=offline_env())
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_bundle_contents(trained, bundled):
    name, tmp = trained
    bundle = bundled
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert {"params.yaml", "predict.py", "requirements.txt", "README.md"} <= files
    assert sorted(p.name for p in (bundle / "adapter").iterdir()) == sorted(p.name for p in (tmp / "adapter").iterdir())
    assert len(list((bundle / "wheels").glob("prefbench-*-py3-none-any.whl"))) == 1
    params = yaml.safe_load((bundle / "params.yaml").read_text())
    assert params["model"] == name and list(params["models"]) == [name] and params["evaluate"]["devices"] == 1
    reqs = [r for r in (bundle / "requirements.txt").read_text().splitlines() if r and not r.startswith("#")]
    names = {r.split("==")[0] for r in reqs}
    # Exactly what Kaggle's image lacks: nothing it has (nor what those require), all predict needs besides.
    assert not names & {"torch", "numpy", "pandas", "transformers", "tokenizers", "safetensors", "pyyaml", "dvc"}
    assert names >= ({"peft", "accelerate", "pyarrow"} if name == "llama3" else {"scikit-learn", "scipy", "pyarrow"})
    assert ("scikit-learn" in names) == (name == "tfidf") and ("peft" in names) == (name == "llama3")
    assert all(re.fullmatch(r"[\w.-]+==[\w.]+", r) for r in reqs), reqs  # pinned, no local (+cpu) labels
    (wheel,) = (bundle / "wheels").glob("prefbench-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        meta = whl.read(next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = {re.split(r"[=<>;\s]", line.split(": ", 1)[1])[0] for line in meta.splitlines()
                if line.startswith("Requires-Dist:")}
    assert not requires & {"dvc", "dvclive", "ruamel.yaml.clib"} and "torch" in requires, requires
    # Nothing to unpickle: weights are safetensors, the rest text.
    assert {Path(n).suffix for n in files} <= {".safetensors", ".json", ".yaml", ".py", ".md", ".txt", ".whl",
                                               ".model", ".jinja"}, files
    if name == "llama3":
        assert params["models"]["llama3"]["pretrained"] == "base" and (bundle / "base" / "config.json").is_file()


# predict.py's two paths, one model each: the LLM on one process (the test file handed over whole:
# the predict stage's own batches) and tfidf on two (the rows dealt by length and the parts merged
# back; tfidf rows are independent, so still the stage's bytes). Sharding an LLM's rows over
# devices changes only its batches' padding: tests/test_multi_gpu.py compares those logits.
DEVICES = {"llama3": 1, "tfidf": 2}


def test_bundle_in_a_fresh_venv_gives_the_predict_stage_submission(trained, bundled, venv, tmp_path):
    name, tmp = trained
    devices = DEVICES[name]
    bundle = bundled
    outside = tmp_path / "kaggle-working"
    outside.mkdir()
    install(venv, bundle, outside)
    where = in_venv(venv, "-c", "import prefbench, stages; print(prefbench.__file__); print(stages.__file__)",
                    cwd=outside).stdout.split()
    assert all(str(venv.parents[1]) in w for w in where), where  # the wheel's copy, not this checkout
    proc = in_venv(venv, str(bundle / "predict.py"), "--test-csv", str(tmp / "test.csv"), "--out",
                   str(outside / "submission.csv"), "--devices", str(devices), cwd=outside)
    assert (outside / "submission.csv").read_bytes() == (tmp / "submission.csv").read_bytes()
    summary = json.loads(proc.stdout.split("predict.py summary: ")[1].splitlines()[0])
    assert summary["processes"] == devices and summary["rows"] == len(pd.read_csv(tmp / "test.csv"))
    assert summary["model"] == name and summary["projected_hours"] > 0
    assert proc.stdout.count(" would take ") == 1  # one projection: predict.py's, not also each process's
    assert ("T4" in proc.stdout) == (name == "llama3")  # the T4 caveat is for LLMs timed elsewhere


def test_a_blend_bundle_in_a_fresh_venv_mixes_its_members_submissions(tmp_path_factory, venv, tmp_path):
    """`python -m prefbench.bundle --member ... --member ... --weights` with the tiny llama3 and gemma2
    (trained on the same rows), installed offline into the fresh venv: predict.py runs both members
    (--placement shard: one after the other, one process each here) and writes their predict
    stages' submissions mixed with the weights, as prefbench.blend mixes them; the projection is
    the sum of the members' hours."""
    from prefbench.blend import Member, blend_submission, test_arrays, write_submission

    llama, gemma = train("llama3", tmp_path_factory), train("gemma2", tmp_path_factory)
    bundle = tmp_path / "bundle"
    proc = forked.run("-m", "prefbench.bundle", "--out", bundle, "--no-wheels", "--copy-base",
                      "--member", f"llama3={llama / 'params.yaml'},{llama / 'adapter'}",
                      "--member", f"gemma2={gemma / 'params.yaml'},{gemma / 'adapter'}", "--weights", "0.7,0.3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = json.loads((bundle / "blend.json").read_text())
    assert [(m["name"], m["model"], m["weight"]) for m in spec["members"]] == [("llama3", "llama3", 0.7),
                                                                              ("gemma2", "gemma2", 0.3)]
    for m in spec["members"]:
        params = yaml.safe_load((bundle / m["dir"] / "params.yaml").read_text())
        assert list(params["models"]) == [m["model"]] and params["models"][m["model"]]["pretrained"] == "base"
        assert (bundle / m["dir"] / "base" / "config.json").is_file()
        assert (bundle / m["dir"] / "adapter" / "resolved_params.json").is_file()
    assert not (bundle / "adapter").exists() and len(list((bundle / "wheels").glob("prefbench-*.whl"))) == 1

    outside = tmp_path / "kaggle-working"
    outside.mkdir()
    install(venv, bundle, outside)
    proc = in_venv(venv, str(bundle / "predict.py"), "--test-csv", str(llama / "test.csv"), "--out",
                   str(outside / "submission.csv"), cwd=outside)
    members = [Member(name, pd.DataFrame(), pd.read_csv(folder / "submission.csv", dtype=str, keep_default_na=False))
               for name, folder in (("llama3", llama), ("gemma2", gemma))]
    ids, probs = test_arrays(members)
    write_submission(blend_submission(ids, probs, [0.7, 0.3]), tmp_path / "expected.csv")
    assert (outside / "submission.csv").read_bytes() == (tmp_path / "expected.csv").read_bytes()
    got = pd.read_csv(outside / "submission.csv")
    subs = [pd.read_csv(folder / "submission.csv") for folder in (llama, gemma)]
    cols = ["winner_model_a", "winner_model_b", "winner_tie"]
    mixed = 0.7 * subs[0][cols].to_numpy() + 0.3 * subs[1][cols].to_numpy()
    assert list(got["id"]) == list(subs[0]["id"])
    assert abs(got[cols].to_numpy() - mixed / mixed.sum(axis=1, keepdims=True)).max() < 1e-6
    summary = json.loads(proc.stdout.split("predict.py summary: ")[1].splitlines()[0])
    assert summary["placement"] == "shard" and summary["weights"] == {"llama3": 0.7, "gemma2": 0.3}
    assert [p["model"] for p in summary["members"].values()] == ["llama3", "gemma2"]
    member_hours = [p["projected_hours"] for p in summary["members"].values()]
    assert all(h > 0 for h in member_hours) and summary["projected_hours"] == pytest.approx(sum(member_hours))
    assert proc.stdout.count(" would take ") == 1 and "T4" in proc.stdout

    # --placement per-gpu: both members at once (one process each; CPU processes here), the same bytes;
    # the projection is the slower member's, the two running side by side
    proc = in_venv(venv, str(bundle / "predict.py"), "--test-csv", str(llama / "test.csv"), "--out",
                   str(outside / "per-gpu.csv"), "--placement", "per-gpu", cwd=outside)
    assert (outside / "per-gpu.csv").read_bytes() == (tmp_path / "expected.csv").read_bytes()
    summary = json.loads(proc.stdout.split("predict.py summary: ")[1].splitlines()[0])
    member_hours = [p["projected_hours"] for p in summary["members"].values()]
    assert summary["placement"] == "per-gpu" and summary["projected_hours"] == max(member_hours)
