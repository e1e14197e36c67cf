"""Write metrics/reference.json: both models' default runs, the numbers every machine must
reproduce within the tolerance (tests/test_e2e.py), with the CPU and torch that made them.

Usage: python -m scripts.write_reference LLAMA3_EVAL_JSON GEMMA2_EVAL_JSON [--out metrics/reference.json]
The eval.json files of `make repro` and of `dvc exp run -S model=gemma2` (the e2e test passes its
own with PREFBENCH_WRITE_REFERENCE=1).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

TOLERANCE = 0.002  # cross-CPU tolerance on log-loss and accuracy (docs/reproducibility.md)
KEYS = ("log_loss", "log_loss_prior", "accuracy", "n_samples", "dtype", "params_trainable")


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def write_reference(evals: dict[str, Path], out: Path) -> dict:
    ref = {"command": "python -m scripts.write_reference " + " ".join(str(p) for p in evals.values()),
           "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "torch": torch.__version__, "tolerance": TOLERANCE,
           "models": {m: {k: json.loads(Path(p).read_text())[k] for k in KEYS} for m, p in evals.items()}}
    for model, metrics in ref["models"].items():
        if json.loads(Path(evals[model]).read_text())["model"] != model:
            raise SystemExit(f"error: {evals[model]} is not a {model} run")
    out.write_text(json.dumps(ref, indent=2) + "\n")
    return ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("llama3", type=Path)
    parser.add_argument("gemma2", type=Path)
    parser.add_argument("--out", type=Path, default=Path("metrics/reference.json"))
    args = parser.parse_args()
    print(json.dumps(write_reference({"llama3": args.llama3, "gemma2": args.gemma2}, args.out), indent=2))


if __name__ == "__main__":
    main()
