#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels the GPU machine's image lacks, for Python 3.12 x86_64:
# transformers and peft at the versions pyproject.toml pins, bitsandbytes (slimmed to the CUDA 13
# libraries: the image's torch is cu130, and the full wheel alone is 43 MB of the 64 MiB a command
# can take along),
# and DVC with what it needs beyond the image (for `dvc repro` on the GPU).
# Usage: bash benchmarks/gpu_wheels.sh   (needs PyPI; the GPU machine has no network)
#        bash benchmarks/gpu_wheels.sh fused   # .whl/fused1, .whl/fused2 for benchmarks/gpu_fused.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PLAT=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
get() {  # binary wheel for the device, else a locally built pure-Python wheel
  python3 -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d "$W" "$1" 2>/dev/null ||
    python3 -m pip wheel -q --no-deps -w "$W" "$1"
}
if [[ "${1:-}" == fused ]]; then
  # transformers, peft, liger-kernel and flash-attn-4 with what it needs beyond the device image
  # (../shared/notes/fa4-liger-h100.md). The CUDA 13 CUTLASS library (a 92 MB wheel) is xz'd and
  # split in two, one part per command (64 MiB each); gpu_fused.sh joins them.
  rm -rf .whl/fused1 .whl/fused2 && mkdir -p .whl/fused1 .whl/fused2
  W=.whl/fused1
  for req in transformers==5.24.0 peft==0.21.2 liger-kernel==0.8.5 flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 \
             nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 quack-kernels==0.6.5 \
             "apache-tvm-ffi<0.2" torch-c-dlpack-ext pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
             typing-inspection==0.4.5 typing-extensions==4.16.0; do get "$req"; done  # pydantic: prefbench.config
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d "$tmp" nvidia-cutlass-dsl-libs-cu13==4.8.1
  (cd "$tmp" && mkdir t && python3 -m zipfile -e nvidia_cutlass_dsl_libs_cu13-*.whl t && tar -C t -cf - . | xz -9 -T0 > cu13.tar.xz &&
   split -n 2 -d cu13.tar.xz part-)
  mv "$tmp/part-00" .whl/fused1/cu13.tar.xz.part-a && mv "$tmp/part-01" .whl/fused2/cu13.tar.xz.part-b
  rm -rf "$tmp"; du -sh .whl/fused*; exit 0
fi
rm -rf .whl/core .whl/dvc && mkdir -p .whl/core .whl/dvc
W=.whl/core
get transformers==5.24.0
get peft==0.21.2
get bitsandbytes==0.50.2
# Slim bitsandbytes: keep the CUDA 13.x and CPU libraries only.
tmp=$(mktemp -d)
here=$PWD
(cd "$tmp" && python3 -m zipfile -e "$here/$W"/bitsandbytes-*.whl . &&
 rm -f bitsandbytes/libbitsandbytes_cuda1[12]*.so bitsandbytes/libbitsandbytes_rocm*.so &&
 rm "$here/$W"/bitsandbytes-*.whl &&
 python3 -m zipfile -c "$here/$W/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl" bitsandbytes bitsandbytes-0.50.2.dist-info)
rm -rf "$tmp"
W=.whl/dvc
for req in $(cat benchmarks/dvc_requirements.txt); do get "$req"; done
du -sh .whl/*
