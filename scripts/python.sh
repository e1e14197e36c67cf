#!/bin/sh
# The Python that runs prefbench's DVC stages (dvc.yaml: `sh scripts/python.sh -m stages.<name> ...`),
# so that `dvc repro` works with nothing activated, whichever `python` is first on PATH:
#   1. $PREFBENCH_PYTHON, if set (an interpreter of your choice);
#   2. the repo's .venv (what `make install` creates), also from a DVC queue's temporary copy of
#      the repo under .dvc/tmp/, which has no .venv of its own;
#   3. python3 (else python) on PATH: an activated virtualenv or conda env, or the system's.
here=$(cd "$(dirname "$0")/.." && pwd)
root=${here%%/.dvc/tmp/*}  # a queued experiment runs in <repo>/.dvc/tmp/exps/<tmp>/
if [ -n "${PREFBENCH_PYTHON:-}" ]; then py=$PREFBENCH_PYTHON
elif [ -x "$here/.venv/bin/python" ]; then py=$here/.venv/bin/python
elif [ -x "$root/.venv/bin/python" ]; then py=$root/.venv/bin/python
else py=$(command -v python3 || command -v python) || { echo "scripts/python.sh: no python found" >&2; exit 127; }
fi
exec "$py" "$@"
