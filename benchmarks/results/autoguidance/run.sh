#!/usr/bin/env bash
# Autoguidance against classifier-free guidance on tiny200 (400 images: 2 seeds x 200 classes).
# AGSTORE: a store holding tiny200 and its weak guide tiny200-guide-b16 (trained with
#   python diffusion.py train --run_name guide_tiny200_b16 --data_dir data/tiny200_32 --base_channels 16 ...
#   then python diffusion.py export output_ImageNet/guide_tiny200_b16 --name tiny200-guide-b16 --store $AGSTORE)
set -euo pipefail
cd "$(dirname "$0")/../../.."
AGSTORE=${AGSTORE:-/work/agstore}
OUT=${OUT:-/tmp/ag}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
E=".venv/bin/python evaluate.py --model tiny200 --store $AGSTORE --settings dpm++:20 --per-class 2 --seed 0 --precision auto --classifier $AGSTORE/tiny200"
$E --guidance 1 --out "$OUT/cfg1"
$E --guidance 6 --guidance-interval 0,100 --out "$OUT/cfg6"
$E --guidance 6 --out "$OUT/cfg6_all"
$E --guidance 2 --guidance-interval 0,100 --guide tiny200-guide-b16 --out "$OUT/ag2"
$E --guidance 3 --guidance-interval 0,100 --guide tiny200-guide-b16 --out "$OUT/ag3"
$E --guidance 4.5 --guidance-interval 0,100 --guide tiny200-guide-b16 --out "$OUT/ag45"
$E --guidance 3 --guide tiny200-guide-b16 --out "$OUT/ag3_all"
