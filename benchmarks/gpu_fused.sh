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
#   bash benchmarks/gpu_fused.sh train-grid W2   # (instead of bench; W2 = .whl/trainrun: part b and the
#                                             # pydantic wheels) default_path.py --no-infer: LoRA
#                                             # training, padded / packed x token budget x checkpointing
#   bash benchmarks/gpu_fused.sh pipeline-train  # then: the train stage at each model's fastest setting
#   bash benchmarks/gpu_fused.sh train-unseen W2 # (instead of train-grid) the fastest settings timed on
#                                             # batches the warm-up did not run; allocator default vs
#                                             # expandable segments
#   bash benchmarks/gpu_fused.sh profile-train W2  # (instead of train-grid) profile_train.py: a step's
#                                             # time on new batches against batches run before
#   bash benchmarks/gpu_fused.sh profile-kernels W2  # (instead of train-grid) profile_train.py
#                                             # --kernels: a step's GPU time by kernel category
#   bash benchmarks/gpu_fused.sh multi-eval W2   # (2 GPUs; instead of bench; W2 = .whl/trainrun) per model:
#                                             # the evaluate stage on 1 and 2 GPUs (pipeline_eval.py
#                                             # --devices 1,2), then TRAIN's train-stage runs
#   bash benchmarks/gpu_fused.sh multi-train [W]  # then (or with W after install): TRAIN's train-stage runs
#                                             # (model:budget:gc|nogc:devices[:steps])
# Unpack the library after the wheels: `pip install --target --upgrade` replaces whole package folders.
set -uo pipefail  # no -e: a step cut by its timeout keeps what it wrote
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/keep
what=$1; W=${2:-}
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD PATH=/tmp/site/bin:$PATH
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
unpack() {  # W: part b of the library and/or wheels to add (the library after the wheels of install)
  if [[ -f "$1"/cu13.tar.xz.part-b ]]; then
    cat /tmp/cu13.tar.xz.part-a "$1"/cu13.tar.xz.part-b | xz -d | tar -x -C /tmp/site || return 1
  fi
  if compgen -G "$1/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$1"/*.whl
  fi
}
dvclive_stub() {  # the image has no dvclive (the train stage imports it; its wheels do not fit a call):
  # a Live that writes nothing, the per-step curves only, no timing. Nothing else of the stage changes.
  python3 -c "from dvclive import Live" 2>/dev/null && return
  mkdir -p /tmp/site/dvclive
  printf '%s\n' 'class Live:  # stub (benchmarks/gpu_fused.sh): no curves written' \
    '    def __init__(self, *a, **k): self.step = 0' '    def __enter__(self): return self' \
    '    def __exit__(self, *a): return False' '    def log_metric(self, *a, **k): pass' \
    '    def next_step(self): pass' > /tmp/site/dvclive/__init__.py
  echo "dvclive: stub in /tmp/site/dvclive"
}
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
    unpack "$W" || exit 1
    check || exit 1
    R=$OUT/pipeline-eval-packed-h100
    for m in ${MODELS:-llama3-8b gemma2-9b}; do  # one model at a time: a cut run keeps complete pairs
      timeout "${BENCH_TIMEOUT:-200}" python3 -m benchmarks.packed --out "$R.bench-$m.json" --models "$m" \
        --batches 16 --budgets 16384 --no-window-kept --budget-s "${BUDGET_S:-110}" 2>&1 | tee "$R.bench-$m.log"
      timeout "${EVAL_TIMEOUT:-200}" python3 -m benchmarks.pipeline_eval --bench "$R.bench-$m.json" \
        --out "$R.$m.json" 2>&1 | tee "$R.$m.log"
    done ;;
  train-grid)  # both models in one process; each model gets an equal share of what is left
    unpack "$W" || exit 1
    N=${NAME:-train-packed-h100}; L=$OUT/$N.log
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$L"
    check >> "$L" 2>&1 || { cat "$L"; exit 1; }
    cat "$L"
    timeout "${BENCH_TIMEOUT:-510}" python3 -m benchmarks.default_path --out "$OUT/$N.json" \
      --no-infer --rows "${ROWS:-600}" --train-steps "${STEPS:-8}" --budget-s "${BUDGET_S:-470}" ${BENCH_ARGS:-} \
      --train-grid "${GRID:-padded:rows4,packed:4096,packed:8192,packed:4096:gc,packed:16384:gc,packed:8192:gc,packed:32768:gc}" \
      2>&1 | grep --line-buffered -v "UserWarning\|exe_args\|warnings.warn" | tee -a "$L"
    cp "$OUT/$N.json" /tmp/keep/ ;;
  pipeline-train)  # after train-grid on this machine (or GRID_JSON): one stage run per model, its fastest grid setting
    G=${GRID_JSON:-/tmp/keep/train-packed-h100.json}; P=$OUT/${NAME:-pipeline-train-h100}
    [[ -f $G ]] || { echo "no $G: run train-grid first"; exit 1; }
    { check; dvclive_stub; } 2>&1 | tee -a "$P.log"
    for m in ${MODELS:-llama3-8b gemma2-9b}; do  # one process per model: a cut run keeps the first
      timeout "${STAGE_TIMEOUT:-265}" python3 -m benchmarks.pipeline_train --grid "$G" --out "$P.json" --models "$m" \
        ${STAGE_ARGS:-} 2>&1 | grep --line-buffered -v "UserWarning\|exe_args\|warnings.warn" | tee -a "$P.log"
    done ;;
  train-unseen)  # W as train-grid. Each model's fastest grid setting, timed on batches the warm-up did not
                 # run (a long run's), with the default allocator and with expandable segments
    unpack "$W" || exit 1
    check || exit 1
    for mc in ${CELLS:-llama3-8b:packed:8192 gemma2-9b:packed:32768:gc}; do
      m=${mc%%:*}; c=${mc#*:}
      timeout "${BENCH_TIMEOUT:-220}" python3 -m benchmarks.default_path --out "$OUT/train-unseen-h100.$m.json" \
        --models "$m" --no-infer --rows 600 --train-steps 8 --train-timed-seed 1 --train-grid "$c,$c:exp" \
        --budget-s 200 2>&1 | grep --line-buffered -v "UserWarning\|exe_args\|warnings.warn" |
        tee -a "$OUT/train-unseen-h100.log"
    done ;;
  profile-train)  # W as train-grid: benchmarks/profile_train.py (steps on new batches vs batches run before)
    unpack "$W" || exit 1
    check || exit 1
    N=${NAME:-profile-train-h100}
    timeout "${PROFILE_TIMEOUT:-400}" python3 -m benchmarks.profile_train --out "$OUT/$N.json" \
      ${PROFILE_ARGS:-} 2>&1 | grep --line-buffered -v "UserWarning\|exe_args\|warnings.warn" |
      tee "$OUT/$N.log" ;;
  profile-kernels)  # W as train-grid (or none where a command before unpacked it): profile_train.py --kernels per CELLS
    [[ -n $W ]] && { unpack "$W" || exit 1; }
    check || exit 1
    for mc in ${CELLS:-gemma2-9b:packed:32768:gc llama3-8b:packed:8192}; do
      m=${mc%%:*}; c=${mc#*:}
      timeout "${PROFILE_TIMEOUT:-300}" python3 -m benchmarks.profile_train --kernels --out "$OUT/profile-train-kernels-h100.$m.json" \
        --model "$m" --setting "$c" --steps "${STEPS:-8}" 2>&1 | grep --line-buffered -v "UserWarning\|exe_args\|warnings.warn" |
        tee -a "$OUT/profile-train-kernels-h100.log"
    done ;;
  multi-eval|multi-train)  # W as train-grid. Several GPUs against one, the stages themselves, same rows
    [[ -n $W ]] && { unpack "$W" || exit 1; }  # multi-train too, as a machine's first command after install
    L=$OUT/multi-h100.log
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; check; dvclive_stub; } 2>&1 | tee -a "$L"
    if [[ $what == multi-eval ]]; then
      for m in ${MODELS:-llama3-8b gemma2-9b}; do  # one file per model: a cut run keeps the first
        timeout "${EVAL_TIMEOUT:-240}" python3 -m benchmarks.pipeline_eval --out "$OUT/multi-eval-h100.$m.json" \
          --models "$m" --rows "${ROWS:-990}" --devices 1,2 2>&1 | grep --line-buffered -v "UserWarning\|exe_args\|warnings.warn" | tee -a "$L"
      done
    fi
    for spec in ${TRAIN:-}; do  # model:token_budget:gc|nogc:devices[:steps]
      IFS=: read -r m b g d n <<< "$spec"
      timeout "${STAGE_TIMEOUT:-200}" python3 -m benchmarks.pipeline_train --out "$OUT/multi-train-h100.json" \
        --models "$m" --token-budget "$b" --$([[ $g == gc ]] || echo no-)gradient-checkpointing --devices "$d" \
        --steps "${n:-40}" --key "$m:$b:$g:$d" 2>&1 | grep --line-buffered -v "UserWarning\|exe_args\|warnings.warn" | tee -a "$L"
    done ;;
  eval)
    [[ -f /tmp/keep/default-path.json ]] || { echo "no /tmp/keep/default-path.json: a fresh machine (run install, bench first)"; exit 1; }
    check || exit 1
    cp /tmp/keep/default-path.json "$OUT/"
    timeout "${EVAL_TIMEOUT:-570}" python3 -m benchmarks.pipeline_eval --bench /tmp/keep/default-path.json \
      --out "$OUT/pipeline-eval.json" 2>&1 | tee "$OUT/pipeline-eval.log" ;;
esac
