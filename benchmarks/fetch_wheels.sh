#!/usr/bin/env bash
# Download, here (the device machine has no network), the wheels run_gpu.sh installs there:
# its image has transformers 5.17, whose Qwen2.5-VL forward has no `mm_encoder_outputs` (the
# project's vision cache and the cached-embedding training path need it), so transformers 5.23
# and the peft this project was tested with travel as wheels. Both are pure Python (14 MB).
# Their other needs (huggingface_hub >= 1.31, tokenizers 0.23, safetensors 0.8, accelerate,
# regex, typer, pyyaml, psutil) are already on the device image (KINDS.md, 2026-11).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d wheels transformers==5.23.0 peft==0.21.2
ls -la wheels
