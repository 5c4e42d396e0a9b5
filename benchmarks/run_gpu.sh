#!/usr/bin/env bash
# Issue 7's benchmarks in one GPU call: judge then train, 3B then 7B, results as JSON into $OUT.
#
# On the development machine, once:   bash benchmarks/fetch_wheels.sh
# Then one device call from the repository root (README.md in this folder):
#   run(command="bash benchmarks/run_gpu.sh", carry=["benchmarks/wheels"], timeout_s=590)
#
# Each stage runs under `timeout` with what is left of DEADLINE_S (default 540 s, so the call
# ends within 9 minutes however the stages go); every script writes its JSON after every row,
# so a stage cut short still leaves what it measured. At most 8 files come back from $OUT:
# 4 JSON + 4 logs.
#
# TINY=1 bash benchmarks/run_gpu.sh   rehearses the whole script on CPU in a minute (tiny shapes).
# STAGES="train-7B" bash benchmarks/run_gpu.sh   runs only the named stages (a rerun of one cut short).
set -uo pipefail
START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-540}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore::FutureWarning TRANSFORMERS_VERBOSITY=error
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

# The device image has transformers 5.17, which lacks `mm_encoder_outputs`: install the carried wheels.
if compgen -G "benchmarks/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    benchmarks/wheels/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python3 - <<'EOF' || exit 1
import inspect, torch, transformers, peft
from transformers import Qwen2_5_VLForConditionalGeneration as M
card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print("torch", torch.__version__, "| transformers", transformers.__version__, "| peft", peft.__version__, "|", card)
if "mm_encoder_outputs" not in inspect.signature(M.forward).parameters:
    raise SystemExit("transformers too old (no mm_encoder_outputs): run benchmarks/fetch_wheels.sh and carry benchmarks/wheels")
EOF
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader 2>/dev/null || true

if [[ "${TINY:-0}" == 1 ]]; then
  SMALL=(--tiny) LARGE=(--tiny) TRAIN_SMALL=(--tiny) TRAIN_LARGE=(--tiny --batch-sizes 2)
else
  SMALL=(--sizes 3B) LARGE=(--sizes 7B) TRAIN_SMALL=(--sizes 3B --batch-sizes 8 16) TRAIN_LARGE=(--sizes 7B --batch-sizes 8)
fi

stage() {  # stage NAME SECONDS COMMAND...: at most SECONDS, and never past the deadline
  local name=$1 budget=$2 left
  shift 2
  if [[ -n "${STAGES:-}" && " $STAGES " != *" $name "* ]]; then return; fi
  left=$(( DEADLINE_S - ($(date +%s) - START) ))
  (( left < budget )) && budget=$left
  if (( budget < 40 )); then echo "== $name skipped: ${left}s left"; return; fi
  echo "== $name (up to ${budget}s, at $(( $(date +%s) - START ))s)"
  timeout --signal=TERM --kill-after=15 "$budget" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name exit $rc at $(( $(date +%s) - START ))s"
  if grep -q '^saved ' "$OUT/$name.log"; then
    sed -n '/^judge throughput on\|^LoRA training throughput on/,$p' "$OUT/$name.log"
  else
    tail -n 15 "$OUT/$name.log"  # cut short or failed: its JSON still holds the rows measured
  fi
}

stage judge-3B 150 python3 benchmarks/judge_throughput.py "${SMALL[@]}" --workloads A B --naive-samples 2 --out "$OUT"
stage train-3B 115 python3 benchmarks/train_throughput.py "${TRAIN_SMALL[@]}" --out "$OUT"
# 7B skips the two rows that do not depend on the model (PNG decoding, preprocessing) to save time.
stage judge-7B 160 python3 benchmarks/judge_throughput.py "${LARGE[@]}" --workloads A B --naive-samples 2 --out "$OUT" \
  --paths naive_generate_bs1 hf_generate hf_score_forward vision_only vision_grouped ours_score_cold ours_score_warm \
          ours_pointwise_x5 ours_pairwise_both ours_generate
stage train-7B 100 python3 benchmarks/train_throughput.py "${TRAIN_LARGE[@]}" --out "$OUT"
echo "== done at $(( $(date +%s) - START ))s"
ls -la "$OUT"
