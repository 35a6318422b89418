#!/usr/bin/env python3
"""Does free text land on its class, as written and snapped? The same paraphrases, seeds and sampler
(the model's defaults): as written; snapped as the app snaps (read by the model's training texts,
pulled toward their classes' prompts) at each strength; pulled toward the nearest training texts
themselves; and read by one prompt per class (the app's snap before the texts were kept). Against the
class names of the same classes, scored by one or two yardsticks.

    python -m benchmarks.bench_snap --model tiny200 --classifier model_store/tiny200 \\
        --classifier2 assets/yardstick2_tiny200 --free-text assets/paraphrases_unlike.tsv \\
        --per-prompt 4 --snaps 0.5,1 --log benchmarks/results/tiny200_round2/snap/tiny200.txt

"of the names" divides a row's top-1 by the class names' top-1 on the same classes (each paraphrase
weighs its class once), as evaluate.py's free-text line does. The embedding-only ceiling of the same
paraphrases (bench_text_ceiling) is about 73%: no conditioning on these embeddings goes far past it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.benchlog import tee_stdout  # noqa: E402
from core.prompting import snapping_encoder  # noqa: E402
from engine import store  # noqa: E402
from engine.class_texts import CLASS_PROMPTS_TEMPERATURE, snap_targets  # noqa: E402
from evaluation.classifier import load_classifier  # noqa: E402
from evaluation.free_text import free_text_rows, read_free_text  # noqa: E402
from evaluation.yardstick import YardstickClasses  # noqa: E402


def yardstick(folder: Path, lm: store.LoadedModel):
    clf, meta = load_classifier(folder)
    return clf, YardstickClasses.match(lm.class_names, meta["classes"], f"the yardstick in {folder}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny200")
    p.add_argument("--store", default=None)
    p.add_argument("--classifier", type=Path, required=True, help="the first yardstick's folder")
    p.add_argument("--classifier2", type=Path, default=None, help="a second yardstick's folder")
    p.add_argument("--free-text", default=str(ROOT / "assets/paraphrases_unlike.tsv"))
    p.add_argument("--per-prompt", type=int, default=4, help="images per prompt (seeds seed..seed+n-1)")
    p.add_argument("--snaps", default="1", help="snap strengths toward the training texts, e.g. 0.5,1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--log", default=None, help="also write everything printed to this file")
    args = p.parse_args(argv)
    tee_stdout(args.log)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from models.text_encoder import encode_prompts

    lm = store.load_model(args.model, store=args.store)
    defaults = lm.sampler_defaults
    sampler, steps, guidance = defaults.get("sampler", "dpm++"), defaults.get("steps", 20), defaults.get("guidance_scale", 3.0)
    judges = [yardstick(args.classifier, lm)] + ([yardstick(args.classifier2, lm)] if args.classifier2 else [])
    pairs = read_free_text(args.free_text, lm.class_names, skip_unknown=True)
    classes = sorted({c for _, c in pairs})
    names = [(lm.classes[c].get("prompt") or lm.class_names[c], c) for c in classes]
    texts = snap_targets(lm, encode_prompts)
    if texts is None or texts.source != "training texts":
        raise SystemExit(f"{args.model} keeps no training texts: `python diffusion.py texts {args.model} --data_dir DIR`")
    prompts = encode_prompts([prompt for prompt, _ in names])
    variants = [("class names", names, encode_prompts), ("paraphrases as written", pairs, encode_prompts)]
    variants += [(f"snap {s:g}, read by the training texts (the app)", pairs,
                  snapping_encoder(encode_prompts, texts.keys, s, texts.temperature, texts.values))
                 for s in map(float, args.snaps.split(","))]
    variants += [("snap 1 toward the nearest training texts themselves", pairs,
                  snapping_encoder(encode_prompts, texts.keys, 1.0, texts.temperature)),
                 ("snap 1, read by the class prompts (before)", pairs,
                  snapping_encoder(encode_prompts, prompts, 1.0, CLASS_PROMPTS_TEMPERATURE))]
    print(f"{args.model} ({lm.config.get('step')} steps), {sampler} {steps}, guidance {guidance}; {len(pairs)} "
          f"paraphrases of {len(classes)} classes from {args.free_text}, {args.per_prompt} images each; "
          f"{len(texts.keys)} training texts; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    results = {}
    for label, variant_pairs, enc in variants:
        t0 = time.perf_counter()
        rows = free_text_rows(lm, judges[0][0], variant_pairs, per_prompt=args.per_prompt, sampler=sampler, steps=steps,
                              guidance=guidance, seed=args.seed, batch_size=args.batch_size, device=torch.device("cpu"),
                              encode_fn=enc, yardstick=judges[0][1], guidance_interval=lm.guidance_interval,
                              second=judges[1] if len(judges) > 1 else None)
        results[label] = rows
        print(f"  {label}: {sum(r['images'] for r in rows)} images in {time.perf_counter() - t0:.0f} s")
    by_class = {k: {r["class"]: r[k] for r in results["class names"]} for k in ("accuracy", "accuracy2")[:len(judges)]}
    print(f"\n| prompts | top-1 (1st) | of the names | " + ("top-1 (2nd) | of the names |" if len(judges) > 1 else ""))
    print("| --- | ---: | ---: |" + (" ---: | ---: |" if len(judges) > 1 else ""))
    summary = {}
    for label, rows in results.items():
        cells = []
        for key, table in by_class.items():
            acc = float(np.mean([r[key] for r in rows]))
            ref = float(np.mean([table[r["class"]] for r in rows])) if label != "class names" else acc
            cells += [f"{acc:.1%}", f"{acc / ref:.0%}" if ref else "-"]
            summary.setdefault(label, {})[key] = {"top1": acc, "of_names": acc / ref if ref else None}
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.log:
        Path(args.log).with_suffix(".json").write_text(json.dumps({"summary": summary, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
