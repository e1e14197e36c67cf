from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "arena_train_sample.csv"

# Tests never touch the network: the shipped models are local and the hub is off.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Nor the user's huggingface_hub cache, nor transformers' cache of remote code: the session has its
# own (empty) ones, made by the first process and inherited by the pytest workers and the warm
# server (which reads them while importing). tests/test_security.py serves a hub id from the first
# and runs a model folder's code into the second (its control, trust_remote_code=True).
if "PREFBENCH_TEST_HUB_CACHE" not in os.environ:
    os.environ["PREFBENCH_TEST_HUB_CACHE"] = os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="prefbench-hub-")
    os.environ["HF_MODULES_CACHE"] = os.path.join(os.environ["HF_HUB_CACHE"], "modules")
    atexit.register(shutil.rmtree, os.environ["PREFBENCH_TEST_HUB_CACHE"], ignore_errors=True)


def pytest_configure(config):
    """One warm interpreter server (tests/forked.py) for the whole session, started here, in the
    process that starts the pytest-xdist workers (or runs the tests itself), so that torch & co.
    are imported once: the workers, and the stage processes the tests start, are forked from it."""
    from tests import forked
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get(forked.SHARED):
        return
    # Under pytest-xdist (make test: two workers on two cores, plus the shared run's subprocesses)
    # one thread per process: more would oversubscribe the cores. Results do not depend on it
    # (float64). Set here, so that the server and the workers started after it inherit it.
    if config.getoption("numprocesses", None):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    config.prefbench_server = forked.Server()
    os.environ[forked.SHARED] = config.prefbench_server.shared  # the workers inherit it
    # The pytest-xdist workers are children forked from it too, started with torch & co. imported:
    # `-n N` made N plain `popen` specs, which execnet starts as `python -u -c <bootstrap>`; here
    # through the server's client script instead of the interpreter.
    tx = config.getoption("tx", None) or []
    if tx and all(spec == "popen" for spec in tx):
        config.option.tx = [f"popen//python={config.prefbench_server.python}"] * len(tx)


def pytest_unconfigure(config):
    from tests import forked
    server = getattr(config, "prefbench_server", None)
    if server is not None:
        server.close()
        os.environ.pop(forked.SHARED, None)


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
    """The README's commands run once in fresh git copies (tests/workspace.py): {"native", "second"}.
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
