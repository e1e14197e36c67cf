"""`python -m <module> args` for tests, without paying for the interpreter's imports each time.

A stage process spends seconds of CPU importing torch, transformers and peft
before its first line runs; the tests start dozens of them. Here each one is a child forked from a
server process that imported those libraries once. The server is single-threaded (forking it is
safe, unlike forking a pytest worker): it accepts a request on a Unix socket (argv, working
directory, environment, and the caller's stdin/stdout/stderr as file descriptors), forks, and the
child runs the module as `python -m` does (runpy, `__main__`, sys.argv, the working directory
first on sys.path), writing straight to the caller's descriptors; the server sends back the
child's pid at once and its exit status when it ends (negative: killed by that signal, as
subprocess reports it). It is a separate process: a crash, a SIGKILL or `sys.exit` in the child
leaves the caller alone.

Four callers:
- tests, through `run` and `start` (like subprocess.run / Popen), on the session's server, which
  tests/conftest.py starts before the pytest workers and they share (`server`);
- DVC's stage commands in the session's shared run (tests/workspace.py): `scripts/python.sh` runs
  $PREFBENCH_PYTHON when set, and `Server.python` is a two-line client script for it
  (`python tests/forked.py client -m stages.train ...`, stdlib only, started in milliseconds);
  prefbench's own DVC calls (prefbench.compare.dvc: `$PREFBENCH_PYTHON -m dvc`) go through it too;
- the tests' DVC commands, all but the shared run's first `make repro` (`Server.dvc`, a client
  script for `-m dvc`: the venv's `dvc` entry point is `dvc.cli.main`, as `python -m dvc` is),
  which spares DVC's second of imports a command;
- pytest-xdist, which starts its workers through that client script (tests/conftest.py): each
  worker is a child of the server, its test modules' imports of torch & co. already done.

What a fork cannot give: what is fixed when the interpreter starts or the libraries are imported
(PYTHONHASHSEED, ATEN_CPU_CAPABILITY, the hub's offline switch and cache folder) is the server's,
whatever a request's environment says; the session's server is started with the session's
environment, and HASH_SEED. The `python -m` command line itself, as a user's `dvc repro` runs it,
is tested with real interpreters (the shared run's native `make repro`). What a fork can give, it
does: a child that runs in another copy of the repo (a git copy, a DVC queue's temporary copy)
imports that copy's prefbench, not the server's preloaded one (`_forget_other_checkout`).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the stages and benchmarks import; the model classes are imported lazily by transformers, and
# DVC's repo class by dvclive's Live (it looks for the DVC repo it runs in); what DVC's command line
# imports for its commands (the queue's celery, networkx for the DAG, git through pygit2).
PRELOAD = ("torch", "transformers", "peft", "accelerate", "dvclive", "dvc.repo", "dvc.scm", "sklearn.linear_model",
           "sklearn.feature_extraction.text", "sklearn.model_selection", "sklearn.calibration",
           "transformers.models.llama.modeling_llama", "transformers.models.gemma2.modeling_gemma2",
           "prefbench.models", "prefbench.train", "prefbench.infer", "prefbench.tfidf", "prefbench.packing",
           "dvc.cli", "dvc.cli.parser", "dvc.repo.experiments.queue.celery", "dvc.repo.experiments.show",
           "dvc.repo.metrics.diff", "dvc.repo.params.diff", "dvc.repo.plots.diff", "dvc.repo.graph", "dvc.compare",
           "dvc.render.converter", "dvc.repo.index", "networkx", "pygit2", "pyparsing")


# The hash seed of the servers' interpreters (fixed when an interpreter starts; a forked child keeps
# it): the shared run (tests/workspace.py) compares data stages run here with the same stages in
# fresh interpreters of another seed.
HASH_SEED = "2"


# ---------------------------------------------------------------- wire format: length-prefixed JSON

def _send(sock: socket.socket, data: dict, fds: list[int] | None = None) -> None:
    payload = json.dumps(data).encode()
    header = struct.pack("!I", len(payload))
    if fds:
        socket.send_fds(sock, [header], fds)
    else:
        sock.sendall(header)
    sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _recv(sock: socket.socket, nfds: int = 0) -> tuple[dict, list[int]]:
    fds: list[int] = []
    if nfds:
        header, fds, _, _ = socket.recv_fds(sock, 4, nfds)
        header += _recv_exact(sock, 4 - len(header))
    else:
        header = _recv_exact(sock, 4)
    (n,) = struct.unpack("!I", header)
    return json.loads(_recv_exact(sock, n)), fds


# ---------------------------------------------------------------- server

def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become `python [-u] [-B] -m module args` (or `-c code args`) and exit."""
    import atexit
    import runpy

    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    while argv[0] in ("-u", "-B"):  # the interpreter options execnet starts pytest-xdist's workers with
        if argv.pop(0) == "-u":  # unbuffered stdout and stderr
            sys.stdout.reconfigure(write_through=True)
            sys.stderr.reconfigure(write_through=True)
        else:
            sys.dont_write_bytecode = True
    sys.path.insert(0, request["cwd"])  # as `python -m` puts the working directory first
    _forget_other_checkout()
    code = 0
    try:
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102  (python -c)
        else:
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    except SystemExit as e:  # as the interpreter turns sys.exit's argument into a status
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001  (an uncaught exception: traceback and status 1, as python does)
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    os._exit(code)


def _forget_other_checkout() -> None:
    """In a child that runs in another copy of the repo (a test's git copy, a DVC queue's temporary
    copy under .dvc/tmp/exps/): drop the repo's packages the server imported from its own checkout
    (prefbench, through PRELOAD) where the child's sys.path finds them elsewhere first, so that the
    child imports the copy's library, as a fresh `python -m` in the copy would. Torch & co. stay
    imported; the copy's modules are read again (their own code, a fraction of a second)."""
    import importlib.machinery

    packages = {name.split(".")[0] for name, module in list(sys.modules.items())
                if name != "__main__" and Path(getattr(module, "__file__", None) or "/").is_relative_to(ROOT)}
    for package in packages:
        spec = importlib.machinery.PathFinder.find_spec(package, sys.path)  # where a fresh interpreter looks
        if spec is None or spec.origin == getattr(sys.modules.get(package), "__file__", None):
            continue
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


def serve(path: str) -> None:
    """The server's loop (`python tests/forked.py serve SOCKET`): import PRELOAD, then fork one child
    per request; report each child's pid at once and its exit status when it ends."""
    import gc
    import importlib

    sys.path[0] = os.getcwd()  # the repo it serves (not tests/, this file's folder)
    for name in PRELOAD:
        importlib.import_module(name)
    # What the imports made, out of the garbage collector's sight: a child's collections would walk
    # (and so copy, page by page, out of the memory it shares with this process) every object of
    # torch & co., at each full collection.
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # ready: clients wait for the socket to appear
    waiting: dict[int, socket.socket] = {}  # child pid -> its caller's connection
    listener.settimeout(0.02)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            conn = None
        if conn is not None:
            conn.settimeout(None)
            request, fds = _recv(conn, 3)
            pid = os.fork()
            if pid == 0:
                for other in (listener, conn, *waiting.values()):
                    other.close()
                _run_child(request, fds)
            for fd in fds:
                os.close(fd)
            _send(conn, {"pid": pid})
            waiting[pid] = conn
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid)
            try:
                _send(conn, {"status": os.waitstatus_to_exitcode(status)})
            except OSError:
                pass  # the caller is gone
            conn.close()


class Server:
    """A warm interpreter server for the repo, started with this process's environment and
    PYTHONHASHSEED=HASH_SEED; its socket, log and client scripts (`python`, `dvc`) in a temporary folder."""

    def __init__(self):
        # The socket in a short folder of its own: a Unix socket's path is limited to ~107 bytes,
        # which a deep pytest temporary folder can exceed.
        self._tmp = tempfile.TemporaryDirectory(prefix="warm-")
        folder = Path(self._tmp.name)
        self.socket = str(folder / "server.sock")
        self.python = folder / "python"  # a client for $PREFBENCH_PYTHON
        command = " ".join(shlex.quote(str(a)) for a in (sys.executable, Path(__file__).resolve(), "client", self.socket))
        self.python.write_text(f"#!/bin/sh\nexec {command} \"$@\"\n")
        self.dvc = folder / "dvc"  # `dvc ARGS` on the server
        self.dvc.write_text(f"#!/bin/sh\nexec {command} -m dvc \"$@\"\n")
        for script in (self.python, self.dvc):
            script.chmod(0o755)
        self._log = open(folder / "server.log", "w")  # noqa: SIM115  (open while the server runs)
        self._proc = subprocess.Popen([sys.executable, __file__, "serve", self.socket], cwd=ROOT,
                                      env={**os.environ, "PYTHONHASHSEED": HASH_SEED}, stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=subprocess.STDOUT)

    @classmethod
    def attach(cls, shared: str) -> Server:
        """The server another process of this test session started (`SHARED`: its socket and client
        script, as `Server.shared` writes them; tests/conftest.py)."""
        self = cls.__new__(cls)
        self.socket, python = shared.split(os.pathsep)
        self.python, self._proc = Path(python), None
        self.dvc = self.python.with_name("dvc")
        return self

    @property
    def shared(self) -> str:
        return f"{self.socket}{os.pathsep}{self.python}"

    def ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"warm server exited {self._proc.returncode}: "
                                   f"{Path(self._log.name).read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"warm server not ready after {timeout} s")
            time.sleep(0.05)

    def start(self, argv: list[str], cwd: Path | str, env: dict[str, str] | None, stdin: int, stdout: int,
              stderr: int) -> Child:
        self.ready()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket)
        _send(sock, {"argv": argv, "cwd": str(cwd), "env": dict(os.environ if env is None else env)},
              [stdin, stdout, stderr])
        return Child(argv, sock, _recv(sock)[0]["pid"])

    def close(self) -> None:
        if self._proc is None:  # attached: its owner closes it
            return
        self._proc.kill()
        self._proc.wait()
        self._log.close()
        self._tmp.cleanup()


class Child:
    """A started child, like subprocess.Popen: pid, poll(), wait(), kill()."""

    def __init__(self, args: list[str], sock: socket.socket, pid: int):
        self.args, self._sock, self.pid = args, sock, pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._sock.settimeout(timeout)
            try:
                self.returncode = _recv(self._sock)[0]["status"]
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            self._sock.close()
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0.001)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- the tests' side

_server: Server | None = None
SHARED = "PREFBENCH_TEST_SERVER"  # the session's server (tests/conftest.py), shared by the pytest workers


def server() -> Server:
    """The test session's server when tests/conftest.py started one ($PREFBENCH_TEST_SERVER: one
    for all pytest workers, its imports paid once), else this process's own, started at the first call."""
    global _server
    if _server is None:
        if os.environ.get(SHARED):
            _server = Server.attach(os.environ[SHARED])
        else:
            _server = Server()
            import atexit
            atexit.register(_server.close)
    return _server


def start(*argv, cwd: Path | str = ROOT, env: dict[str, str] | None = None,
          out: str = os.devnull, err: str = os.devnull) -> Child:
    """Start `python -m module args` (argv = ("-m", module, *args)) or `python -c code args`,
    stdout and stderr to the files `out` and `err`."""
    assert argv[0] in ("-m", "-c"), argv
    fds = [os.open(os.devnull, os.O_RDONLY), os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
           os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)]
    try:
        return server().start([str(a) for a in argv], cwd, env, *fds)
    finally:
        for fd in fds:
            os.close(fd)


def run(*argv, cwd: Path | str = ROOT, env: dict[str, str] | None = None,
        timeout: float | None = 1800) -> subprocess.CompletedProcess:
    """Run `python -m module args` to the end, as subprocess.run(..., capture_output=True, text=True)."""
    with tempfile.TemporaryDirectory(prefix="forked-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        child = start(*argv, cwd=cwd, env=env, out=out, err=err)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            raise
        stdout, stderr = (Path(p).read_text(errors="replace") for p in (out, err))
    return subprocess.CompletedProcess([sys.executable, *map(str, argv)], code, stdout, stderr)


# ---------------------------------------------------------------- the client script

def client(path: str, argv: list[str]) -> int:
    """`python tests/forked.py client SOCKET -m module args`: run it on the server with this
    process's stdin/stdout/stderr, working directory and environment; exit with its status."""
    deadline = time.monotonic() + 600
    while not os.path.exists(path):  # the server is still importing (started beside the first stage)
        if time.monotonic() > deadline:
            sys.exit(f"tests/forked.py client: no server at {path} after 600 s")
        time.sleep(0.05)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    _send(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}, [0, 1, 2])
    pid = _recv(sock)[0]["pid"]
    # A launcher stopping this "process" (torchrun's SIGTERM to its workers) stops the child too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: os.kill(pid, signum))
    status = _recv(sock)[0]["status"]
    return 128 - status if status < 0 else status  # killed by a signal: as a shell reports it


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif sys.argv[1] == "client":
        sys.exit(client(sys.argv[2], sys.argv[3:]))
