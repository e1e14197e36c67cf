#!/usr/bin/env bash
# The noise floor of the default run: the seed-to-seed spread of log_loss and accuracy, per model.
#
# Usage, in the repo root with the default set-up committed:  bash benchmarks/noise_floor.sh
# Defaults: MODELS="llama3 gemma2" SEED_PARAMS="train.seed data.seed" SEEDS=0,1,2,3,4 OUT=metrics/noise.json
# JOBS=1 (queue workers; 2 runs two experiments at once) QUEUE_SET="" (more `-S key=value` for every
# queued experiment, e.g. the test suite's small runs: QUEUE_SET="-S sample.rows=200").
# DVC and prefbench.compare run on $PREFBENCH_PYTHON where set (the stages' Python: scripts/python.sh),
# else on the repo's .venv (or the `python` on PATH).
#
# Per model and seed it queues `dvc exp run --queue -S model=M -S train.seed=S -n NAME`, and the same
# for data.seed (with the defaults 2 x 5 experiments a model, one of them a copy of the default run),
# each named nf-<run id>-<model>-<train|data>-<seed>, runs the queue one experiment at a time
# (`dvc queue start -j 1`), waits until it is empty, then
# `python -m prefbench.compare --rev <the commit> --experiments <those names> --noise-out OUT` writes per
# model the mean and sample sd of its seed group: only the experiments this run queued, not others of
# the commit with the same params (a user's own `-S train.seed=7`). Commit OUT:
# `python -m prefbench.pr_comment` judges changes against it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then export PATH="$PWD/.venv/bin:$PATH"; fi  # the venv's python and dvc
PY=${PREFBENCH_PYTHON:-python}  # prefbench's Python, as scripts/python.sh takes it; DVC is the one beside it
dvc() { "$PY" -m dvc "$@"; }
MODELS=${MODELS:-llama3 gemma2}
SEED_PARAMS=${SEED_PARAMS:-train.seed data.seed}
SEEDS=${SEEDS:-0,1,2,3,4}
OUT=${OUT:-metrics/noise.json}
POLL_S=${POLL_S:-15}
JOBS=${JOBS:-1}
QUEUE_SET=${QUEUE_SET:-}

BASE=$(git rev-parse --short HEAD)  # the queued experiments belong to this commit, wherever HEAD goes meanwhile
RUN=${RUN:-$(date +%Y%m%d%H%M%S)}  # this run's names are unique among the commit's experiments
failed() { dvc queue status | grep -c Failed || true; }
failed_before=$(failed)
names=()
for model in $MODELS; do
  for param in $SEED_PARAMS; do
    for seed in ${SEEDS//,/ }; do
      name="nf-$RUN-$model-${param%%.*}-$seed"
      # shellcheck disable=SC2086  # QUEUE_SET is a list of arguments
      dvc exp run --queue -S "model=$model" -S "$param=$seed" $QUEUE_SET -n "$name"
      names+=("$name")
    done
  done
done
dvc queue start -j "$JOBS"
idle=0
while status=$(dvc queue status) && grep -qE "Queued|Running" <<<"$status"; do
  # DVC's worker can exit with experiments still queued (seen under load: its filesystem broker read
  # a half-written message). Two polls with work queued and no worker: start another one.
  if grep -q "0 active, 0 idle" <<<"$status" && ! grep -q Running <<<"$status"; then
    idle=$((idle + 1))
    if [ "$idle" -ge 2 ]; then dvc queue start -j "$JOBS"; idle=0; fi
  else
    idle=0
  fi
  sleep "$POLL_S"
done
echo "$status"
if [ "$(failed)" != "$failed_before" ]; then
  echo "error: an experiment failed: see \`dvc queue logs NAME\` for the Failed ones above" >&2
  exit 1
fi
"$PY" -m prefbench.compare --rev "$BASE" --experiments "$(IFS=,; echo "${names[*]}")" --noise-out "$OUT"
