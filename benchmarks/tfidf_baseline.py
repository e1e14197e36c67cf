"""The tfidf baseline's committed results: `dvc exp run -S model=tfidf` on the real sample and on the
generated default data, in a fresh clone of this commit.

Usage: python -m benchmarks.tfidf_baseline [--out benchmarks/results]

Clones HEAD (once per run) into a temporary folder beside a link to ../shared (so the real sample's path is
the documented `../shared/data/arena_train_sample.csv`), runs each command there with this venv's
DVC, and writes one JSON per run: the command, the commit, the machine, and the metrics files the
run wrote (data, tokens, train, eval, predict). README's baseline row is read from
`tfidf-arena-sample.json` (tests/test_tfidf.py checks it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "tfidf-arena-sample.json": "dvc exp run -S model=tfidf -S data.train_csv=../shared/data/arena_train_sample.csv",
    "tfidf-generated.json": "dvc exp run -S model=tfidf",
}
METRICS = ("data", "tokens", "train", "eval", "predict")


def sh(cmd: str, cwd: Path, **extra: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", **extra}
    proc = subprocess.run(shlex.split(cmd), cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"error: {cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


BUNDLED = "tfidf-arena-sample.json"  # its model also goes through the Kaggle bundle


def bundle_run(repo: Path, tmp: Path) -> dict:
    """`python -m prefbench.bundle`, then the bundle's predict.py on the run's test.csv (the generated
    one: the hidden test set is not public); its printed summary, and whether its submission is
    the predict stage's."""
    sh(f"{sys.executable} -m prefbench.bundle --out {tmp / 'bundle'}", repo)
    out = sh(f"{sys.executable} {tmp / 'bundle' / 'predict.py'} --test-csv {repo / 'data' / 'sample' / 'test.csv'} "
             f"--out {tmp / 'submission.csv'}", tmp, PYTHONPATH=str(repo))  # the clone's prefbench, not an editable install's
    summary = json.loads(out.split("predict.py summary: ")[1].splitlines()[0])
    same = (tmp / "submission.csv").read_bytes() == (repo / "data" / "submission.csv").read_bytes()
    return {"bundle_command": "python -m prefbench.bundle --out bundle && python bundle/predict.py "
                              "--test-csv data/sample/test.csv --out submission.csv",
            "bundle_predict": summary, "bundle_printed": out.strip().splitlines()[-3:],
            "bundle_same_submission_as_predict_stage": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    commit = sh("git rev-parse HEAD", ROOT).strip()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "shared").symlink_to(ROOT.parent / "shared")
        for name, cmd in RUNS.items():
            repo = Path(tmp) / "prefbench"  # a fresh clone per run: `dvc exp run` applies its params
            sh(f"rm -rf {repo}", Path(tmp))
            sh(f"git clone -q {ROOT} {repo}", Path(tmp))
            log = sh(cmd, repo)
            extra = bundle_run(repo, Path(tmp)) if name == BUNDLED else {}
            result = {"command": cmd, "commit": commit, "machine": f"{platform.node()}: {os.cpu_count()} CPUs (shared)",
                      "run_by": "python -m benchmarks.tfidf_baseline",
                      **{f"metrics/{m}.json": json.loads((repo / "metrics" / f"{m}.json").read_text()) for m in METRICS},
                      **extra, "log_tail": log.strip().splitlines()[-12:]}
            path = Path(args.out) / name
            path.write_text(json.dumps(result, indent=2) + "\n")
            ev = result["metrics/eval.json"]
            print(f"{name}: log_loss {ev['log_loss']:.4f} (prior {ev['log_loss_prior']:.4f}), "
                  f"{ev['seconds_per_sample']:.2e} s/sample -> {path}")


if __name__ == "__main__":
    main()
