"""tests/forked.py, the warm interpreter server most tests start stages on: a child behaves as
`python -m` / `python -c` would, as seen by subprocess (exit status, stdout, stderr, signals), and
so does the client script that DVC's stage commands reach through $PREFBENCH_PYTHON."""

import os
import shutil
import signal
import subprocess
import sys
import time

from tests import forked
from tests.conftest import ROOT


def test_exit_status_and_output_as_a_fresh_interpreter_gives_them():
    ok = forked.run("-c", "import sys; print('out'); print('err', file=sys.stderr)")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "out\n", "err\n")
    assert forked.run("-c", "import sys; sys.exit(3)").returncode == 3
    message = forked.run("-c", "import sys; sys.exit('stopped: reason')")
    assert (message.returncode, message.stderr) == (1, "stopped: reason\n")
    crash = forked.run("-c", "raise ValueError('boom')")
    assert crash.returncode == 1 and crash.stderr.startswith("Traceback") and "ValueError: boom" in crash.stderr
    help_ = forked.run("-m", "stages.prepare", "--help")  # a module run as __main__, argv as given
    assert help_.returncode == 0 and help_.stdout.startswith("usage: prepare.py")


def test_cwd_environment_and_atexit_are_the_callers(tmp_path):
    code = ("import atexit, os, sys; atexit.register(lambda: print('atexit ran'));"
            "print(os.getcwd(), os.environ.get('PROBE'), sys.path[0], sys.argv[1:])")
    proc = forked.run("-c", code, "a", "b", cwd=tmp_path, env={**os.environ, "PROBE": "x"})
    assert proc.stdout.splitlines() == [f"{tmp_path} x {tmp_path} ['a', 'b']", "atexit ran"]
    assert "PROBE" not in forked.run("-c", "import os; print(sorted(os.environ))").stdout  # not left behind


def test_a_killed_child_reports_the_signal(tmp_path):
    child = forked.start("-c", "import time; time.sleep(60)")
    time.sleep(0.2)
    assert child.poll() is None
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(10) == -signal.SIGKILL


def test_client_script_passes_stdin_and_exit_status_through():
    server = forked.server()
    server.ready()
    proc = subprocess.run([str(server.python), "-c", "import sys; print(sys.stdin.read().upper()); sys.exit(4)"],
                          input="piped", capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (4, "PIPED\n")


def test_client_script_takes_the_interpreter_options_execnet_starts_xdist_workers_with():
    """`python -u -B -c ...`, as execnet starts a pytest-xdist worker (tests/conftest.py forks the
    workers from the server): the options are taken as the interpreter takes them (unbuffered
    output, no bytecode written), not passed on as the command."""
    code = ("import sys; print(sys.argv, sys.stdout.write_through, sys.stderr.write_through,"
            " sys.dont_write_bytecode)")
    argv = ["-u", "-B", "-c", code, "x"]
    got = subprocess.run([str(forked.server().python), *argv], capture_output=True, text=True, timeout=60)
    real = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)
    assert (got.returncode, got.stdout) == (0, real.stdout) == (0, "['-c', 'x'] True True True\n"), got.stderr


def test_a_child_in_another_copy_of_the_repo_runs_that_copys_library(tmp_path):
    """The server preloads prefbench from its own checkout; a stage run in a copy of the repo (a
    test's git copy, a DVC queue's temporary one) imports the copy's prefbench, modules the server
    preloaded included, as `python -m` in the copy would. In the checkout the preloaded ones stay."""
    copy = tmp_path / "copy"
    for package in ("prefbench", "stages"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    infer = copy / "prefbench" / "infer.py"
    infer.write_text(infer.read_text() + "\nIN_THE_COPY = True\n")
    probe = ("import sys; import stages.evaluate, prefbench.infer;"
             "print(prefbench.infer.__file__, sys.modules['prefbench.models'].__file__,"
             " getattr(prefbench.infer, 'IN_THE_COPY', False))")
    (copy / "probe.py").write_text(probe)
    proc = forked.run("-m", "probe", cwd=copy)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [str(infer), str(copy / "prefbench" / "models.py"), "True"]
    home = forked.run("-c", probe.replace("import stages.evaluate, ", "import "), cwd=ROOT)
    assert home.stdout.split() == [str(ROOT / "prefbench" / "infer.py"), str(ROOT / "prefbench" / "models.py"), "False"]
