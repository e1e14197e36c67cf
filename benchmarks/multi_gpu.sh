#!/usr/bin/env bash
# Several GPUs vs one, with the pipeline's own stages (full-size Llama3-8B, random-init weights,
# generated rows): DDP training (train.devices) and sharded inference (evaluate.devices).
# Usage (from benchmarks/run_gpu.sh multi): bash benchmarks/multi_gpu.sh OUT_DIR [GPUS] [MODEL]
#   1. train on 1 GPU -> adapter1;  evaluate adapter1 on 1 GPU and on GPUS GPUs (same inputs)
#   2. train on GPUS GPUs (DDP)     -> adapter2; evaluate adapter2 on 1 GPU
# then benchmarks/multi_gpu_summary.py compares log-loss and time -> OUT/multi-gpu.json (with every
# stage's metrics inside) and OUT/multi-gpu.md. ROWS, TRAIN_BATCH, MAX_LENGTH, PRETRAINED override.
# CPU smoke run (2 CPU workers): PRETRAINED=models/tiny-llama3 ROWS=150 MAX_LENGTH=96 bash benchmarks/multi_gpu.sh /tmp/o
set -euo pipefail
OUT=$1; N=${2:-2}; MODEL=${3:-llama3}; W=$(mktemp -d)
python3 - "$W" "$N" "$MODEL" <<'PY'
import os, sys, yaml
w, n, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
raw = yaml.safe_load(open("params.yaml"))
raw["model"] = model
raw["sample"].update(rows=int(os.environ.get("ROWS", 1000)), test_rows=100)
raw["train"].update(epochs=1, learning_rate=1e-4, log_every=5, checkpoint_every=0)
full = {"llama3": "models/llama3-8b", "gemma2": "models/gemma2-9b"}[model]
raw["models"][model].update(pretrained=os.environ.get("PRETRAINED", full), max_length=int(os.environ.get("MAX_LENGTH", 1024)),
                            train_batch_size=int(os.environ.get("TRAIN_BATCH", 8)), eval_batch_size=32)
for k in (1, n):
    raw["train"]["devices"] = raw["evaluate"]["devices"] = k
    yaml.safe_dump(raw, open(f"{w}/p{k}.yaml", "w"))
PY
p1=(--params "$W/p1.yaml"); pn=(--params "$W/p$N.yaml")
python3 -m stages.sample "${p1[@]}" --out "$W/train.csv" --test-out "$W/test.csv"
python3 -m stages.prepare "${p1[@]}" --csv "$W/train.csv" --out "$W/prepared" --metrics "$W/multi-data.json"
python3 -m stages.tokenize "${p1[@]}" --prepared "$W/prepared" --out "$W/tokens" --metrics "$W/multi-tokens.json"
train() {  # params, adapter name
  python3 -m stages.train --params "$1" --tokens "$W/tokens" --out "$W/$2" --metrics "$W/multi-train-$2.json" --live "$W/live-$2"
}
evaluate() {  # params, adapter name, tag
  python3 -m stages.evaluate --params "$1" --tokens "$W/tokens" --adapter "$W/$2" --metrics "$W/multi-eval-$3.json" \
    --predictions "$W/multi-pred-$3.csv" --calibration "$W/cal-$3.csv" --speed-accuracy "$W/sa-$3.json"
}
summary() { python3 -m benchmarks.multi_gpu_summary "$W" "$N" "$OUT/multi-gpu.json" > "$OUT/multi-gpu.md" || true; }
# A failing step is reported and the others still run; the summary (rewritten after every step, so a
# run cut short keeps what it measured) marks what is missing.
train "$W/p1.yaml" adapter1 || echo "FAILED: train on 1 GPU"; summary
evaluate "$W/p1.yaml" adapter1 1gpu || echo "FAILED: evaluate on 1 GPU"; summary
evaluate "$W/p$N.yaml" adapter1 ${N}gpu || echo "FAILED: evaluate on $N GPUs"; summary
train "$W/p$N.yaml" adapter$N || echo "FAILED: train on $N GPUs"; summary
evaluate "$W/p1.yaml" adapter$N ddp${N}-1gpu || echo "FAILED: evaluate the DDP adapter"; summary
cat "$OUT/multi-gpu.md"
