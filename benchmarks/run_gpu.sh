#!/usr/bin/env bash
# Run on a CUDA machine with no network, from the repo root, with .whl/ (benchmarks/gpu_wheels.sh) copied there.
# It prints the card, driver and package versions first.
#   bash benchmarks/run_gpu.sh bench llama3-8b      # benchmarks.gpu_bench for one model -> $OUT
#   bash benchmarks/run_gpu.sh profile              # benchmarks.profile_attention -> $OUT/profile.json
#   bash benchmarks/run_gpu.sh multi 2              # 1 GPU vs 2: DDP training, sharded evaluate
#   bash benchmarks/run_gpu.sh repro                # dvc exp run, full-size configs, few hundred rows
set -uo pipefail  # no -e: a step killed by its timeout keeps what it wrote, and the next step runs
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
what=$1; shift
sets=core; [[ "$what" == repro || "$what" == multi ]] && sets="core dvc"  # the stages need dvclive
for s in $sets; do
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/$s/*.whl
done
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=10
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
case $what in
  bench)
    for m in "$@"; do
      tag=${m//,/_}  # a comma in a file name keeps it from coming back from the device
      timeout "${BENCH_TIMEOUT:-580}" python3 -m benchmarks.gpu_bench --models "$m" --out "$OUT/bench-$tag.json" --budget-s "${BUDGET_S:-520}" ${BENCH_ARGS:-} 2>&1 |
        grep -vE "it/s\]|s/it\]" | tee "$OUT/bench-$tag.log"
    done ;;
  profile)
    timeout "${PROFILE_TIMEOUT:-580}" python3 -m benchmarks.profile_attention --out "$OUT/profile.json" ${PROFILE_ARGS:-} 2>&1 |
      grep -vE "it/s\]|s/it\]|USDT" | tee "$OUT/profile.log" ;;
  multi)
    bash benchmarks/multi_gpu.sh "$OUT" "${1:-2}" "${2:-llama3}" 2>&1 | grep -vE "it/s\]|s/it\]|step/s\]|batch/s\]" | tee "$OUT/multi-gpu.log" ;;
  repro)
    bash benchmarks/gpu_repro.sh "$OUT" 2>&1 | grep -vE "it/s\]|s/it\]" | tee "$OUT/repro.log" ;;
esac
