#!/usr/bin/env bash
# The default-path side by side with flash-attn-4 and Liger on a CUDA machine with no network, in
# three back-to-back commands on one machine (benchmarks/README.md lists them). Each command gets
# at most 64 MiB copied along with the checkout, less than flash-attn-4's CUDA 13 CUTLASS library
# (one 193 MB .so): it travels xz'd in two parts (benchmarks/gpu_wheels.sh fused makes W1 and W2).
#   bash benchmarks/gpu_fused.sh install W1   # wheels -> /tmp/site, part a of the library -> /tmp
#   bash benchmarks/gpu_fused.sh bench W2     # joins part b, unpacks; default_path.py -> $OUT
#   bash benchmarks/gpu_fused.sh eval         # pipeline_eval.py: the evaluate stage on the bench's rows
#   bash benchmarks/gpu_fused.sh more W2      # (instead of bench) profile of the default path, then
#                                             # default_path.py --only-default --compile (break-even)
#   bash benchmarks/gpu_fused.sh packed-eval W2  # (instead of bench) per model: packed.py's packed cell
#                                             # at the default token_budget, then pipeline_eval.py on
#                                             # its rows (eval.json of the packed path vs the benchmark)
# Unpack the library after the wheels: `pip install --target --upgrade` replaces whole package folders.
set -uo pipefail  # no -e: a step cut by its timeout keeps what it wrote
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/keep
what=$1; W=${2:-}
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD PATH=/tmp/site/bin:$PATH
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
check() {
  python3 -c "import torch, transformers, peft, liger_kernel, cutlass
from transformers.utils import is_flash_attn_4_available as fa4
print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name(), 'fa4', fa4())"
}
case $what in
  install)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$W"/*.whl
    cp "$W"/cu13.tar.xz.part-a /tmp/ && ls -la /tmp/cu13.tar.xz.part-a
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ;;
  bench)
    cat /tmp/cu13.tar.xz.part-a "$W"/cu13.tar.xz.part-b | xz -d | tar -x -C /tmp/site || exit 1
    check || exit 1
    timeout "${BENCH_TIMEOUT:-570}" python3 -m benchmarks.default_path --out "$OUT/default-path.json" \
      --budget-s "${BUDGET_S:-500}" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/default-path.log"
    cp "$OUT/default-path.json" /tmp/keep/ ;;
  more)
    cat /tmp/cu13.tar.xz.part-a "$W"/cu13.tar.xz.part-b | xz -d | tar -x -C /tmp/site || exit 1
    check || exit 1
    timeout "${PROFILE_TIMEOUT:-200}" python3 -m benchmarks.profile_attention --out "$OUT/profile-default.json" \
      --paths llama3-8b:flash_attention_4:liger,gemma2-9b:flash_attention_4:liger 2>&1 | grep -v "UserWarning\|exe_args" |
      tee "$OUT/profile-default.log"
    timeout "${BENCH_TIMEOUT:-360}" python3 -m benchmarks.default_path --out "$OUT/default-path-compile.json" \
      --only-default --compile --no-train --budget-s "${BUDGET_S:-340}" 2>&1 | tee "$OUT/default-path-compile.log" ;;
  packed-eval)  # W: part b of the library, or (the library unpacked already) wheels to add
    if [[ -f "$W"/cu13.tar.xz.part-b ]]; then
      cat /tmp/cu13.tar.xz.part-a "$W"/cu13.tar.xz.part-b | xz -d | tar -x -C /tmp/site || exit 1
    fi
    if compgen -G "$W/*.whl" > /dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$W"/*.whl
    fi
    check || exit 1
    R=$OUT/pipeline-eval-packed-h100
    for m in ${MODELS:-llama3-8b gemma2-9b}; do  # one model at a time: a cut run keeps complete pairs
      timeout "${BENCH_TIMEOUT:-200}" python3 -m benchmarks.packed --out "$R.bench-$m.json" --models "$m" \
        --batches 16 --budgets 16384 --no-window-kept --budget-s "${BUDGET_S:-110}" 2>&1 | tee "$R.bench-$m.log"
      timeout "${EVAL_TIMEOUT:-200}" python3 -m benchmarks.pipeline_eval --bench "$R.bench-$m.json" \
        --out "$R.$m.json" 2>&1 | tee "$R.$m.log"
    done ;;
  eval)
    [[ -f /tmp/keep/default-path.json ]] || { echo "no /tmp/keep/default-path.json: a fresh machine (run install, bench first)"; exit 1; }
    check || exit 1
    cp /tmp/keep/default-path.json "$OUT/"
    timeout "${EVAL_TIMEOUT:-570}" python3 -m benchmarks.pipeline_eval --bench /tmp/keep/default-path.json \
      --out "$OUT/pipeline-eval.json" 2>&1 | tee "$OUT/pipeline-eval.log" ;;
esac
