#!/usr/bin/env bash
# The whole GPU session in one device call (benchmarks/gpu_train.py has the why). Before it, here:
#   python -m benchmarks.gpu_train pack --data data/tiny200_32 --out .gpu/tiny200_32.npz --shards 4
#   python -m benchmarks.gpu_train pack --data data/tiny200_64 --out .gpu/tiny200_64.npz
# then carry the shards in successive calls (each call's carry is capped at 64 MiB with the tree;
# a warm machine keeps what earlier calls carried), e.g. `ls .gpu` with carry [".gpu/tiny200_32.part1.npz"],
# then part2, part3, and last this script with carry [".gpu/tiny200_32.part4.npz", ...]:
#   bash benchmarks/gpu_session.sh 6 3        # minutes at 32 px, minutes at 64 px
# Eight files come back under $OUT: per model its fp16 EMA weights, config, samples and result JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="${OUT:-/tmp/gpu_out}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m benchmarks.gpu_train train --packed .gpu/tiny200_32*.npz --minutes "${1:-6}" --out "$out"
if ls .gpu/tiny200_64*.npz >/dev/null 2>&1 && [ "${2:-3}" != 0 ]; then
  python3 -m benchmarks.gpu_train train --packed .gpu/tiny200_64*.npz --minutes "${2:-3}" --out "$out"
fi
