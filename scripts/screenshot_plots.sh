#!/bin/sh
# docs/plots.png: the page `dvc plots diff HEAD gemma2` writes in a fresh copy of this repo after
# `dvc exp run -S model=gemma2 -n gemma2`, as headless Chromium draws it from disk (no network).
# HEAD is the committed default run (llama3); gemma2 is trained here, on this machine's CPU.
#
# Usage: sh scripts/screenshot_plots.sh        (from anywhere; a few minutes on 2 CPU cores)
# Needs: the project's venv at .venv (or PYTHON=/path/to/venv/bin/python) and Debian's `chromium`.
# The copy is tests/gitcopy.py's git_copy: what `git add -A` would commit, in a new git repo, so
# uncommitted edits are in it; commit (or stash) first for a figure of the committed code.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=$ROOT/docs/plots.png
# dvc, and the `python` of dvc.yaml's commands, from the venv; no hub access; an identity for the
# commits `dvc exp run` makes in the copy.
PATH=$(dirname "$PYTHON"):$PATH
export PATH DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  GIT_AUTHOR_NAME=prefbench GIT_AUTHOR_EMAIL=prefbench@invalid \
  GIT_COMMITTER_NAME=prefbench GIT_COMMITTER_EMAIL=prefbench@invalid
command -v chromium >/dev/null || { echo "error: chromium not found (apt-get install chromium)" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(cd "$ROOT" && "$PYTHON" -c 'import sys, pathlib; from tests.gitcopy import git_copy; git_copy(pathlib.Path(sys.argv[1]))' "$TMP/repo")

cd "$TMP/repo"
dvc exp run -S model=gemma2 -n gemma2
dvc plots diff HEAD gemma2 -o "$TMP/page"

# 1110x1240 px: the page's 2-column layout at that width, every plot in view. The virtual time
# budget (ms) lets vega-embed finish drawing before the shot.
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --no-first-run --user-data-dir="$TMP/chromium" --hide-scrollbars --window-size=1110,1240 \
  --virtual-time-budget=15000 --screenshot="$TMP/plots.png" "file://$TMP/page/index.html" \
  >"$TMP/chromium.log" 2>&1 || { cat "$TMP/chromium.log" >&2; exit 1; }
mv "$TMP/plots.png" "$OUT"
echo "$OUT"
