"""The Kaggle hand-off: `python -m prefbench.bundle`, installed into a fresh venv with no network and
no repo checkout, gives the predict stage's submission.csv, for the tiny Llama3 and for tfidf.

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


@pytest.fixture(scope="module", params=["llama3", "tfidf"])
def trained(request, tmp_path_factory):
    """sample -> prepare -> tokenize -> train -> predict for one model; its folder."""
    tmp = tmp_path_factory.mktemp(f"bundle-{request.param}")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    (llm_params if request.param == "llama3" else tfidf_params)(raw)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    p = ["--params", str(tmp / "params.yaml")]
    run_stage("sample", *p, "--out", str(tmp / "train.csv"), "--test-out", str(tmp / "test.csv"))
    run_stage("prepare", *p, "--csv", str(tmp / "train.csv"), "--out", str(tmp / "prepared"),
              "--metrics", str(tmp / "data.json"))
    run_stage("tokenize", *p, "--prepared", str(tmp / "prepared"), "--out", str(tmp / "tokens"),
              "--metrics", str(tmp / "tokens.json"))
    run_stage("train", *p, "--tokens", str(tmp / "tokens"), "--out", str(tmp / "adapter"),
              "--metrics", str(tmp / "train.json"), "--live", str(tmp / "live"))
    run_stage("predict", *p, "--test-csv", str(tmp / "test.csv"), "--adapter", str(tmp / "adapter"),
              "--out", str(tmp / "submission.csv"), "--metrics", str(tmp / "predict.json"))
    return request.param, tmp


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
