"""The machine a benchmark runs on: card, driver, versions, the code's state, and the bf16 matmul peak.

Every result file records these, so a number can be traced to the card, the software and the code
that made it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import re
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, by a substring of the card's
# name: MFU is reported against these and against the matmul peak measured in the same run.
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "T4": 65e12}
PACKAGES = ("torch", "transformers", "peft", "accelerate", "flash-attn-4", "liger-kernel", "bitsandbytes",
            "dvc", "dvclive", "numpy")
# The code whose behaviour the numbers describe: the library, the stages and the benchmark itself.
# What decides the measured numbers: the library, the stages, the benchmark's measuring code and the
# params. Not the files that only render committed results into the docs (REPORT_ONLY), so a docs
# table can change without making a run "from other code".
CODE_GLOBS = ("prefbench/*.py", "stages/*.py", "benchmarks/*.py", "params.yaml", "dvc.yaml", "pyproject.toml")
REPORT_ONLY = ("benchmarks/report.py", "benchmarks/cpu_report.py", "benchmarks/docgen.py")


def datasheet_peak(device_name: str) -> float | None:
    return next((v for k, v in DATASHEET_BF16.items() if k in device_name), None)


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions() -> dict:
    """Python, CUDA and every package the measured path can use (None: not installed)."""
    return {"python": platform.python_version(), "cuda": torch.version.cuda,
            **{name: package_version(name) for name in PACKAGES}}


def driver_version() -> str | None:
    """The NVIDIA driver, as nvidia-smi reports it (None where there is none)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else None


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe(dev: torch.device) -> dict:
    """Card name, compute capability, count, driver and interconnect-free facts of this machine."""
    if dev.type != "cuda":
        return {"name": platform.processor() or platform.machine() or "cpu", "type": "cpu", "count": 1,
                "capability": None, "driver": None, "memory_gb": None, "cpu_threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(dev)
    return {"name": props.name, "type": "cuda", "count": torch.cuda.device_count(),
            "capability": list(torch.cuda.get_device_capability(dev)), "driver": driver_version(),
            "memory_gb": round(props.total_memory / 2**30, 1), "cpu_threads": torch.get_num_threads()}


def code_state(root: Path = ROOT) -> dict:
    """The commit (git, or $PREFBENCH_COMMIT where the checkout has no .git) and a digest of the code
    that decides the numbers (CODE_GLOBS), so a result can be matched with the code it came from."""
    digest = hashlib.sha256()
    for path in sorted(p for pattern in CODE_GLOBS for p in root.glob(pattern)
                       if p.relative_to(root).as_posix() not in REPORT_ONLY):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    commit, dirty = os.environ.get("PREFBENCH_COMMIT"), None
    if commit is None:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                    check=True).stdout.strip()
            dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                        capture_output=True, text=True, check=True).stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            commit = None
    return {"commit": commit, "dirty": dirty, "code_digest": digest.hexdigest()[:16]}


def slug(name: str) -> str:
    """A card's short name for a results folder: "NVIDIA H100 80GB HBM3" -> "h100", a CPU -> "cpu"."""
    found = re.search(r"\b([A-Z]{1,3}\d{1,4}[A-Za-z]?|\d{4})\b", name)
    return found.group(1).lower() if found else "gpu"


def default_out(dev: torch.device) -> Path:
    """benchmarks/results/<card>-<date>: the folder `run` writes to without --out."""
    card = slug(describe(dev)["name"]) if dev.type == "cuda" else "cpu"
    return ROOT / "benchmarks" / "results" / f"{card}-{datetime.date.today().isoformat()}"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_peak(dev: torch.device, n: int = 8192, reps: int = 10) -> float:
    """bf16 matmul FLOP/s of this card, n x n x n (median of `reps` after 3 untimed): the MFU
    denominator. On a CPU a small shape, for smoke runs only."""
    if dev.type != "cuda":
        n, reps = 256, 3
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        synchronize(dev)
        t = time.perf_counter()
        a @ b
        synchronize(dev)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times))
