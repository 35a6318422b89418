#!/usr/bin/env bash
# The side-by-side that chose the distillation method (2026-12-03): each method 20 CPU-minutes
# (1 thread, pinned to its own core, run side by side), from the same teacher, scored on 400 images.
# TEACHER: the teacher's store folder; here the tiny200_cs checkpoint (638,592 images seen), exported with
#   python diffusion.py export tiny200_cs --name tiny200 --store output_ImageNet/cs_store
set -euo pipefail
TEACHER=${TEACHER:-output_ImageNet/cs_store/tiny200}
for m in consistency trajectory; do
  OMP_NUM_THREADS=1 python diffusion.py distill $TEACHER --run_name screen-$m --distill_method $m \
    --max_steps 5000 --stop_at_minutes 20 &
done
wait
for m in consistency trajectory; do
  python diffusion.py export output_ImageNet/screen-$m --name screen-$m --store output_ImageNet/screen_store
done
python evaluate.py --model screen-consistency --store output_ImageNet/screen_store --data data/tiny200_32 \
  --settings lcm:4,lcm:2,lcm:1 --per-class 2 --seed 0 --batch-size 100 --guidance 6 --precision fp32 \
  --classifier model_store/tiny200 --out benchmarks/results/live/screen/cd20
python evaluate.py --model screen-trajectory --store output_ImageNet/screen_store --data data/tiny200_32 \
  --settings ddim:4,lcm:4 --per-class 2 --seed 0 --batch-size 100 --guidance 6 --precision fp32 \
  --classifier model_store/tiny200 --out benchmarks/results/live/screen/traj20
