from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "arena_train_sample.csv"

# Tests never touch the network: the shipped models are local and the hub is off.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Under pytest-xdist (make test: two workers on two cores, plus the shared run's subprocesses) one
# thread per process: more would oversubscribe the cores. Results do not depend on it (float64).
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def real_sample() -> Path:
    if not SHARED_SAMPLE.exists():
        pytest.fail(f"{SHARED_SAMPLE} is missing: tests need ../shared/data beside the repo")
    return SHARED_SAMPLE


@pytest.fixture(scope="session")
def tiny_llama_tok():
    from prefbench.models import load_tokenizer
    return load_tokenizer(str(ROOT / "models" / "tiny-llama3"))


@pytest.fixture(scope="session")
def tiny_gemma_tok():
    from prefbench.models import load_tokenizer
    return load_tokenizer(str(ROOT / "models" / "tiny-gemma2"))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """The README's commands run once in fresh git copies (tests/workspace.py): {"native", "portable"}.
    Tests that use it carry `pytestmark = pytest.mark.xdist_group("workspace")`, so that under
    pytest-xdist one worker builds it once."""
    from tests.workspace import build
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:  # the workers' base folders share this session's parent folder
        marker = tmp_path_factory.getbasetemp().parent / "workspace-built-by"
        if marker.exists():
            pytest.fail(f"the shared pipeline run was already built by {marker.read_text()}: xdist_group "
                        "not honoured (pytest 9 with pytest-xdist 3.8 drops it; see pyproject's dev extra)")
        marker.write_text(worker)
    return build(tmp_path_factory)
