#!/usr/bin/env python3
"""Turn ImageNet-format data into training-ready arrays, once.

Training (and the app) never decode a JPEG: they read the folder this tool
writes through :class:`dataprep.dataset.PreprocessedDataset`.

Inputs (the layout is detected; a zip is read in place, never extracted):
* ILSVRC-2012 style ``train/<wnid>/*.JPEG`` (also the ``train`` folder itself,
  or any folder above it such as Kaggle's ``ILSVRC/Data/CLS-LOC/train``). Class
  names come from ``--synsets``, else a ``LOC_synset_mapping.txt`` next to
  ``train/`` (or above it), else the built-in copy in
  ``assets/LOC_synset_mapping.txt``.
* Tiny ImageNet: ``tiny-imagenet-200.zip`` or its extracted folder,
  ``train/<wnid>/images/*.JPEG`` with ``wnids.txt`` (the class list) and
  ``words.txt`` (the names).
* A generic folder of class folders whose names are the class names
  (``cats/…``, ``golden_retriever/…``; underscores become spaces in names).

Output folder (``--out``)::
    train_images.npy   uint8 (N, size, size, 3), np.load(..., mmap_mode="r")
    train_labels.npy   int64 (N,)
    val_images.npy     the held-out split (--val-fraction; may have 0 rows)
    val_labels.npy
    classes.json       index, wnid, names, prompt, count per class
    class_embeddings.npy     float32 (C, 384): each class prompt
    template_embeddings.npy  float32 (C, K, 384): K training prompts per class (--text-variants)
    manifest.json      source, layout, counts, skipped files, duplicates and broken
                       links (symlinks are followed; each real file is read once),
                       versions, options

The work goes to ``<out>.partial`` and is renamed to ``<out>`` only when
complete. An interrupted run (Ctrl-C, SIGTERM, a crash, a kill) leaves a
checkpoint there; re-running the same command resumes from it.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

log = logging.getLogger("preprocess")

import threading

from dataprep.defaults import (
    DEFAULT_DESCRIPTIONS,
    DEFAULT_DOWNLOAD_DIR,
    DEFAULT_MAX_PIXELS,
    DEFAULT_OUT,
    DEFAULT_SIZE,
    DEFAULT_VAL_FRACTION,
    DOWNLOADS,
    EmbedFn,
    PreprocessError,
)
from dataprep.download import download, file_digests
from dataprep.pipeline import preprocess
from models.text_encoder import DEFAULT_PROMPT_TEMPLATE

# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="preprocess.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn ImageNet-format data into training-ready arrays (done once; training never decodes a JPEG).",
        epilog="""\
input layouts (detected automatically; zips are read in place):
  ILSVRC-2012     train/<wnid>/*.JPEG, names from --synsets, a LOC_synset_mapping.txt
                  beside train/ or the built-in assets/LOC_synset_mapping.txt
  Tiny ImageNet   tiny-imagenet-200.zip or its folder: train/<wnid>/images/*.JPEG,
                  class list from wnids.txt, names from words.txt
  generic         <class name>/<images>; the folder names are the class names

output (--out): train_images.npy uint8 (N,S,S,3) [mmap-able], train_labels.npy int64,
  val_images.npy, val_labels.npy, classes.json, class_embeddings.npy (C,384),
  template_embeddings.npy (C,T,384), manifest.json (counts, skipped files, versions)

Bad files (truncated, empty, not images, decompression bombs) are skipped and
listed in manifest.json. Work goes to <out>.partial; an interrupted run resumes
when re-run with the same options.

examples:
  python preprocess.py --src ../shared/data/tiny-imagenet-200.zip --out data/tiny64
  python preprocess.py --src /data/imagenet --size 32 --classes goldfish,n01440764 --max-per-class 300
  python preprocess.py --download tiny-imagenet --out data/tiny64
""",
    )
    p.add_argument("--src", help="a zip archive or a folder (ILSVRC, Tiny ImageNet or generic class folders)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="output side in pixels, e.g. 64 or 32 (default 64)")
    p.add_argument("--classes", help="subset: comma-separated wnids or class names, or a file with one per line")
    p.add_argument("--max-per-class", type=int, help="use at most this many images per class (before the val split)")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help=f"fraction of each class held out as val (default {DEFAULT_VAL_FRACTION}; 0 for none)")
    p.add_argument("--synsets", help="class-name mapping: LOC_synset_mapping.txt, words.txt or imagenet_class_index.json")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE,
                   help=f"text prompt per class, '{{}}' is the name (default {DEFAULT_PROMPT_TEMPLATE!r})")
    p.add_argument("--text-variants", choices=("basic", "rich"), default="rich",
                   help="texts each class is trained under: basic = its name in 6 templates; rich (default) = its "
                        "name in 14 templates, every WordNet synonym, and --descriptions")
    p.add_argument("--descriptions", default=str(DEFAULT_DESCRIPTIONS),
                   help="wnid<TAB>description file of extra training prompts, or 'none' "
                        "(default: the project's assets/class_descriptions.tsv, all Tiny ImageNet classes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class subset/val selection (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images larger than this many pixels (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--download", choices=sorted(DOWNLOADS), help="fetch a public dataset first (then used as --src)")
    p.add_argument("--download-dir", default=DEFAULT_DOWNLOAD_DIR, help=f"where downloads go (default {DEFAULT_DOWNLOAD_DIR})")
    p.add_argument("--download-url", help="override the download URL (a mirror)")
    p.add_argument("--sha256", help="expected SHA-256 of the download (always computed and printed)")
    p.add_argument("--md5", help="expected MD5 of the download (default: the official value for the official URL)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def main(argv: Sequence[str] | None = None, *, embed_fn: EmbedFn | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                            format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    old_level = log.level
    if args.quiet:
        log.setLevel(logging.WARNING)
    if not args.src and not args.download:
        parser.error("give --src (a zip or folder) or --download tiny-imagenet")

    old_term = None
    if hasattr(signal, "SIGTERM") and _is_main_thread():
        def _term(signum, frame):  # a polite kill checkpoints like Ctrl-C
            raise KeyboardInterrupt

        old_term = signal.signal(signal.SIGTERM, _term)
    try:
        src = args.src
        if args.download:
            spec = DOWNLOADS[args.download]
            url = args.download_url or spec["url"]
            md5 = args.md5 or (spec["md5"] if url == spec["url"] else None)
            if not (args.sha256 or md5):
                log.warning("no expected checksum for %s: the download will not be verified "
                            "(its sha256 is printed; pass --sha256 next time)", url)
            path = download(url, Path(args.download_dir) / spec["filename"], sha256=args.sha256, md5=md5,
                            progress=not args.quiet)
            print(f"downloaded {path} (sha256 {file_digests(path)['sha256']})")
            src = src or str(path)
        result = preprocess(
            src,
            args.out,
            size=args.size,
            classes=args.classes,
            max_per_class=args.max_per_class,
            val_fraction=args.val_fraction,
            synsets=args.synsets,
            workers=args.workers,
            prompt_template=args.prompt_template,
            text_variants=args.text_variants,
            descriptions=(None if args.text_variants == "basic" or args.descriptions == "none" else args.descriptions),
            seed=args.seed,
            overwrite=args.overwrite,
            embed_fn=embed_fn,
            max_pixels=args.max_pixels,
            progress=not args.quiet,
        )
    except PreprocessError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        log.setLevel(old_level)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    m = result.manifest
    c = m["counts"]
    if not args.quiet:
        print(
            f"{result.out}: {c['train']} train + {c['val']} val images ({m['image_size']}px, {m['num_classes']} classes), "
            f"{c['skipped']} skipped, {m['seconds']:.1f}s" + (" [already up to date]" if result.skipped_run else "")
        )
    return 0


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
