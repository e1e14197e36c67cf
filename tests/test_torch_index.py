"""The Makefile's default torch install takes PyTorch's CPU index where it answers, pip's own
index at once where it does not (scripts/torch_index.py), against local servers only."""

from __future__ import annotations

import functools
import http.server
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "torch_index.py"


@pytest.fixture()
def cpu_index(tmp_path):
    """A /simple-like index on 127.0.0.1 with a torch page, as PyTorch's CPU index has."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text('<a href="torch-2.13.0+cpu-cp311-linux_x86_64.whl">torch</a>\n')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture()
def closed_port():
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def make_torch_args(index: str) -> str:
    """The torch install line `make install` would run (dry run, nothing installed)."""
    out = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "VENV=/nonexistent-venv", f"PYTHON={sys.executable}",
                          f"TORCH_INDEX={index}", "install"], capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if "pip install -q torch" in line)


def test_reachable_cpu_index_is_used(cpu_index):
    out = subprocess.run([sys.executable, str(SCRIPT), cpu_index], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["--index-url", cpu_index]
    assert make_torch_args(cpu_index).split()[-3:] == ["torch==2.13.0", "--index-url", cpu_index]


def test_unreachable_index_falls_back_at_once(closed_port):
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(SCRIPT), closed_port], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert "did not answer" in out.stderr
    assert time.monotonic() - start < 3  # refused: no wait on the timeout
    assert make_torch_args(closed_port).split()[-1] == "torch==2.13.0"


def test_index_without_torch_page_is_not_used(tmp_path, cpu_index):
    """An index that answers but has no torch page (404) is no CPU index."""
    out = subprocess.run([sys.executable, str(SCRIPT), cpu_index + "/nothing"], capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_gpu_users_keep_their_torch():
    out = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "VENV=/nonexistent-venv",
                          "TORCH=torch==2.13.0 --index-url https://example.invalid/cu128", "TORCH_INDEX=http://127.0.0.1:9",
                          "install"], capture_output=True, text=True, check=True)
    assert "--index-url https://example.invalid/cu128" in out.stdout
    assert "did not answer" not in out.stderr  # TORCH given: no probe
