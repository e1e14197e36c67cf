#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels the device machine lacks, for Python 3.12 x86_64:
# transformers and peft at the versions pyproject.toml pins, bitsandbytes (slimmed to the CUDA 13
# libraries: the image's torch is cu130, and the full wheel alone is 43 MB of a 64 MB carry),
# and DVC with what it needs beyond the image (for `dvc repro` on the GPU).
# Usage: bash benchmarks/gpu_wheels.sh   (needs PyPI; the device machine has no network)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl/core .whl/dvc
W=.whl/core
PLAT=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
get() {  # binary wheel for the device, else a locally built pure-Python wheel
  python3 -m pip download -q --no-deps --only-binary=:all: "${PLAT[@]}" -d "$W" "$1" 2>/dev/null ||
    python3 -m pip wheel -q --no-deps -w "$W" "$1"
}
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
