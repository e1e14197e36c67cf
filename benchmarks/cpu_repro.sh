#!/usr/bin/env bash
# How far does the default run move on another CPU? Trains and evaluates the default llama3 run
# (the repo's data/tokens, from `dvc repro tokenize`) under other kernels and thread counts, in
# float64 (dtype auto on CPU) and float32, and writes one JSON line per run.
#   bash benchmarks/cpu_repro.sh > benchmarks/results/cpu-repro.jsonl
#   bash benchmarks/cpu_repro.sh probe >> benchmarks/results/cpu-repro.jsonl   # the probe alone
#   bash benchmarks/cpu_repro.sh mkl >> benchmarks/results/cpu-repro.jsonl     # the float64 run on MKL's path too
# Each run: NAME, the dtype, then env settings: ATEN_CPU_CAPABILITY=default swaps this CPU's
# vector kernels (AVX2 / AVX-512) for PyTorch's portable ones, a different rounding of every
# float, as another CPU gives; MKL_CBWR=COMPATIBLE also swaps MKL's matrix multiplies for its
# reproducible (SSE2) path, which rounds them differently (the probe) and makes them ~2.8x slower;
# OMP_NUM_THREADS changes the summation order of reductions.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PREFBENCH_PYTHON:-.venv/bin/python}
work=$(mktemp -d)
run() {  # run NAME DTYPE ENV...
  local name=$1 dtype=$2; shift 2
  local d=$work/$name; mkdir -p "$d"
  $PY - "$d/params.yaml" "$dtype" <<'PY'
import sys, yaml
raw = yaml.safe_load(open("params.yaml"))
raw["models"][raw["model"]]["dtype"] = sys.argv[2]
yaml.safe_dump(raw, open(sys.argv[1], "w"), sort_keys=False)
PY
  env TQDM_DISABLE=1 "$@" $PY -m stages.train --params "$d/params.yaml" --tokens data/tokens --out "$d/adapter" \
    --metrics "$d/train.json" --live "$d/live" > "$d/train.log" 2>&1
  env TQDM_DISABLE=1 "$@" $PY -m stages.evaluate --params "$d/params.yaml" --tokens data/tokens --adapter "$d/adapter" \
    --metrics "$d/eval.json" --predictions "$d/pred.csv" --calibration "$d/cal.csv" --speed-accuracy "$d/sa.json" \
    > "$d/eval.log" 2>&1
  $PY - "$name" "$dtype" "$d" "$*" <<'PY'
import json, sys, torch
name, dtype, d, env = sys.argv[1:]
e, t = json.load(open(f"{d}/eval.json")), json.load(open(f"{d}/train.json"))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(json.dumps({"run": name, "dtype": dtype, "env": env, "log_loss": e["log_loss"], "accuracy": e["accuracy"],
                  "final_train_loss": t["final_loss"], "cpu": cpu, "native_capability": torch.backends.cpu.get_cpu_capability(),
                  "torch": torch.__version__}))
PY
}
probe() {  # probe NAME ENV...: do these kernel settings round float32 differently? (seconds, no training)
  local name=$1; shift
  env "$@" $PY - "$name" "$*" <<'PY'
import json, sys, torch
torch.manual_seed(0)
a, b = torch.randn(64, 1000), torch.randn(1000, 224)  # a matmul (MKL) and a reduction (ATen)
x = torch.randn(1, 16, 128, 64)
out = [*(a @ b).sum(0)[:3].tolist(), torch.nn.functional.scaled_dot_product_attention(x, x, x).sum().item()]
print(json.dumps({"probe": sys.argv[1], "env": sys.argv[2], "float32": [float.hex(v) for v in out]}))
PY
}
if [ "${1:-}" = mkl ]; then
  run f64-portable-mkl float64 OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE
  rm -rf "$work"; exit 0
fi
probe native X=1
probe aten-default ATEN_CPU_CAPABILITY=default
probe mkl-compatible MKL_CBWR=COMPATIBLE
probe portable ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE
probe 1-thread OMP_NUM_THREADS=1
[ "${1:-}" = probe ] && exit 0
# Two runs at a time (one thread each): the pairs to compare run side by side.
run f64-native float64 OMP_NUM_THREADS=1 & run f64-portable float64 OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default & wait
run f32-native float32 OMP_NUM_THREADS=1 & run f32-portable float32 OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default & wait
# Thread counts: the probe shows 1 and 2 threads round differently; a pair of 2-thread trainings
# (`run f64-2threads float64 OMP_NUM_THREADS=2`) was stopped unfinished after an hour on the
# loaded 2-core machine that made benchmarks/results/cpu-repro.jsonl, so it is not in the file.
rm -rf "$work"
