#!/usr/bin/env bash
# `dvc exp run` on a GPU with the full-size architectures (random-init: models/llama3-8b,
# models/gemma2-9b) on a few hundred generated rows: the real stages, the default GPU path
# (dtype auto, attention auto, dynamic padding), and a 4-bit NF4 Gemma2 run.
# Usage (from benchmarks/run_gpu.sh): bash benchmarks/gpu_repro.sh OUT_DIR
set -euo pipefail
OUT=$1
git rev-parse -q --verify HEAD >/dev/null 2>&1 || { git init -q; git add -A; git -c user.email=gpu@prefbench -c user.name=gpu commit -qm "device copy"; }
common=(-S sample.rows=400 -S train.epochs=1 -S train.learning_rate=1e-4 -S train.log_every=5)
run() {  # name, then -S overrides
  local name=$1; shift
  local t=$SECONDS
  dvc exp run "${common[@]}" "$@" --name "$name"
  echo "$name: dvc exp run took $((SECONDS - t)) s"
  for f in eval train tokens data; do cp "metrics/$f.json" "$OUT/repro-$name-$f.json"; done
}
RUNS=${RUNS:-gpu-llama3 gpu-gemma2 gpu-gemma2-4bit}
want() { [[ " $RUNS " == *" $1 "* ]]; }
want gpu-llama3 && run gpu-llama3 -S models.llama3.pretrained=models/llama3-8b -S models.llama3.max_length=1024 \
  -S models.llama3.train_batch_size=4 -S models.llama3.eval_batch_size=16
want gpu-gemma2 && run gpu-gemma2 -S model=gemma2 -S models.gemma2.pretrained=models/gemma2-9b -S models.gemma2.max_length=1024 \
  -S models.gemma2.train_batch_size=4 -S models.gemma2.eval_batch_size=16
want gpu-gemma2-4bit && run gpu-gemma2-4bit -S model=gemma2 -S models.gemma2.pretrained=models/gemma2-9b -S models.gemma2.max_length=1024 \
  -S models.gemma2.train_batch_size=4 -S models.gemma2.eval_batch_size=16 -S models.gemma2.quantization=4bit
dvc exp show --json > "$OUT/repro-exp-show.json"
dvc exp show --no-pager --md --drop '.*' --keep 'Experiment|metrics/eval.json:model|log_loss|metrics/eval.json:seconds_per_sample|metrics/eval.json:params_total|metrics/eval.json:weights|metrics/eval.json:quantization|metrics/eval.json:attn_impl' | tee "$OUT/repro-exp-show.md"
