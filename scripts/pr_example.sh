#!/bin/sh
# docs/pr-review-example.md, the example docs/pr-review.md quotes: in a fresh git copy of
# this repo, a branch that sets lora_r: 16 (both LLM entries; llama3 is selected), `dvc repro` as the workflow runs it,
# then the comment against main. Usage: sh scripts/pr_example.sh   (uses .venv, or PYTHON=...)
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-$PWD/.venv/bin/python}
export PREFBENCH_PYTHON="$PY"  # the copy has no .venv: its stages run on this Python
tmp=$(mktemp -d)
"$PY" -c "import sys; from pathlib import Path; from tests.gitcopy import git_copy; git_copy(Path(sys.argv[1]))" "$tmp/repo"
cd "$tmp/repo"
git checkout -q -b lora-r16
sed -i 's/^    lora_r: 8$/    lora_r: 16/' params.yaml  # both LLM entries; llama3 is the one selected
"$(dirname "$PY")/dvc" repro > "$tmp/repro.log" 2>&1 || { tail -30 "$tmp/repro.log"; exit 1; }
"$PY" -m prefbench.pr_comment --base main --head "branch lora-r16" --out "$OLDPWD/docs/pr-review-example.md" > /dev/null
rm -rf "$tmp"
echo "wrote docs/pr-review-example.md"
