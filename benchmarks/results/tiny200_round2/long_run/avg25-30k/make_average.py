"""How tiny200-w48tf-avg25-30k was made (2026-12-05): the mean of three exported milestones' EMA weights.

    cp -r output_ImageNet/candidates/tiny200-w48tf-30k output_ImageNet/candidates/tiny200-w48tf-avg25-30k
    python benchmarks/results/tiny200_round2/long_run/avg25-30k/make_average.py
    python evaluate.py --model tiny200-w48tf-avg25-30k --store output_ImageNet/candidates --data data/tiny200_32 \
        --classifier model_store/tiny200 --classifier2 assets/yardstick2_tiny200 --settings dpm++:20 --per-class 5 \
        --batch-size 100 --out output_ImageNet/eval/w48tf-avg25-30k
(the 27.5k milestone is exported as tiny200-w48tf-27k: its name keeps step // 1000)
"""
from safetensors.torch import load_file, save_file

C = "output_ImageNet/candidates/"
sds = [load_file(C + f"tiny200-w48tf-{n}/model.safetensors") for n in ("25k", "27k", "30k")]
avg = {k: (sum(sd[k].float() for sd in sds) / len(sds)).to(sds[-1][k].dtype) for k in sds[-1]}
save_file(avg, C + "tiny200-w48tf-avg25-30k/model.safetensors")
