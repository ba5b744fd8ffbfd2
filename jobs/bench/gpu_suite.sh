#!/usr/bin/env bash
# The GPU table of the README's Benchmarks section (issue 11), in one short run on one GPU:
# bert-base and bert-large at seq 128 and 512 on the real Wikipedia length mix, packed and
# padded, ours vs transformers.BertForPreTraining (SDPA), bf16 autocast, forward + backward;
# each packed step also runs under torch.cuda.set_sync_debug_mode("error").
# Needs torch and pyyaml (transformers for the comparison); no Ray, DeepSpeed or data.
# A few minutes on an H200. Writes gpu_suite.json and gpu_suite.txt to $OUT (default: .).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-.}"
PY="${PYTHON:-python}"
{
  date -u +"%Y-%m-%d %H:%M UTC"
  "$PY" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PY" -m jobs.bench.step --suite --device cuda --precision bf16 --steps 10 --warmup 3 \
      --output-json "$OUT/gpu_suite.json"
} 2>&1 | tee "$OUT/gpu_suite.txt"
