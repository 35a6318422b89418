"""preprocess.py's sources: layouts (ILSVRC, generic, zip, Tiny ImageNet), hostile inputs, resizing.

Bad and special files (truncated, empty, mislabelled, CMYK, decompression
bombs, symlink loops, hard links, FIFOs) are skipped or read once, with the
reason in the manifest. Helpers and fixtures come from test_preprocess.py.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.prompting import prompt_table
from dataprep.dataset import load_classes
from dataprep.images import decode_image, strict_pil
from dataprep.sources import FolderSource, NotRegularFileError
from models.text_encoder import TEXT_EMBED_DIM
from test_preprocess import (
    BLUE,
    GOLDFISH,
    GREEN,
    RED,
    ROOT,
    SHARK,
    TENCH,
    TIGER_SHARK,
    fake_embed,
    ilsvrc_out,  # noqa: F401 - fixture
    ilsvrc_tree,  # noqa: F401 - fixture
    jpeg_bytes,
    make_tiny_zip,
    png_bytes,
    run,
    solid,
    write_tree,
)


def expected(files: dict[str, dict[str, tuple[bytes, object]]]):
    """(sorted kept (wnid, name, outcome) in output order, skipped names, ignored names)."""
    kept, skipped, ignored = [], {}, []
    for wnid in sorted(files):
        for name in sorted(files[wnid]):
            outcome = files[wnid][name][1]
            if outcome == "ignored":
                ignored.append(name)
            elif isinstance(outcome, str) and outcome.startswith("skip:"):
                skipped[name] = outcome[5:]
            else:
                kept.append((wnid, name, outcome))
    return kept, skipped, ignored


def check_color(img: np.ndarray, want, tol: int = 12) -> None:
    mean = img.reshape(-1, 3).mean(0)
    if want == "gray":
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    else:
        assert np.abs(mean - np.array(want)).max() <= tol, (mean, want)


# --------------------------------------------------------------------------- layouts and bad files


def test_ilsvrc_tree_counts_shapes_and_bad_files(ilsvrc_out):
    out, result, files = ilsvrc_out
    kept, skipped, ignored = expected(files)
    m = result.manifest
    assert m["layout"] == "ilsvrc"
    assert m["counts"]["train"] == len(kept) and m["counts"]["val"] == 0
    assert m["counts"]["skipped"] == len(skipped) == len(m["skipped"])
    assert {Path(s["path"]).name: s["reason"] for s in m["skipped"]}.keys() == skipped.keys()
    for s in m["skipped"]:
        assert skipped[Path(s["path"]).name].lower() in s["reason"].lower(), s
    assert sorted(Path(f).name for f in m["ignored_files"]) == sorted(ignored)
    assert m["empty_classes"] == [TIGER_SHARK]
    assert set(m["versions"]) >= {"python", "numpy", "pillow", "preprocess_format"}

    images = np.load(out / "train_images.npy", mmap_mode="r")
    labels = np.load(out / "train_labels.npy")
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape == (len(kept), 64, 64, 3)
    assert labels.dtype == np.int64 and labels.shape == (len(kept),)
    val = np.load(out / "val_images.npy", mmap_mode="r")
    assert val.shape == (0, 64, 64, 3) and np.load(out / "val_labels.npy").shape == (0,)

    classes = load_classes(out)
    assert [c["wnid"] for c in classes] == [TENCH, GOLDFISH, SHARK]  # sorted, the empty class left out
    assert [c["name"] for c in classes] == ["tench", "goldfish", "great white shark"]
    assert classes[1]["names"] == ["goldfish", "Carassius auratus"]
    assert classes[1]["prompt"] == "a photo of a goldfish"
    assert [c["index"] for c in classes] == [0, 1, 2]
    wnid_index = {c["wnid"]: c["index"] for c in classes}
    for c in classes:
        assert c["count"] == sum(1 for k in kept if k[0] == c["wnid"])
    for i, (wnid, name, outcome) in enumerate(kept):
        assert labels[i] == wnid_index[wnid], name
        check_color(np.asarray(images[i]), outcome)

    emb = np.load(out / "class_embeddings.npy")
    tmpl = np.load(out / "template_embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (3, TEXT_EMBED_DIM)
    table = prompt_table([c["training_prompts"] for c in classes])
    assert tmpl.dtype == np.float32 and tmpl.shape == (3, len(table[0]), TEXT_EMBED_DIM)
    for i, row in enumerate(table):  # row i of the training prompts: the embedding of each of its texts
        np.testing.assert_allclose(tmpl[i], fake_embed(row))
    np.testing.assert_allclose(emb, fake_embed([c["prompt"] for c in classes]))
    doc = json.loads((out / "classes.json").read_text())
    assert doc["prompt_template"] == "a photo of a {}"
    assert not (out.parent / (out.name + ".partial")).exists()


def test_builtin_synsets_resolve_names_without_a_mapping_file(tmp_path):
    files = {TENCH: {"a.JPEG": (jpeg_bytes(solid(RED)), RED)}, "n01530575": {"b.JPEG": (jpeg_bytes(solid(RED)), RED)}}
    base = write_tree(tmp_path / "src", files, mapping=False)
    res = run(base / "train", tmp_path / "out", workers=1)  # the train folder itself
    assert res.manifest["layout"] == "ilsvrc"
    assert [c["name"] for c in load_classes(tmp_path / "out")] == ["tench", "brambling"]


def test_synsets_option_overrides_names(tmp_path, ilsvrc_tree):
    base, _ = ilsvrc_tree
    syn = tmp_path / "names.txt"
    syn.write_text(f"{TENCH} doctor fish\n")
    run(base, tmp_path / "out", synsets=syn, classes=[TENCH])
    assert load_classes(tmp_path / "out")[0]["name"] == "doctor fish"


def test_generic_layout_zip_and_folder(tmp_path):
    root = tmp_path / "animals"
    for folder, color in [("zebra", (250, 250, 250)), ("golden_retriever", (200, 150, 50)), ("cat", (10, 10, 10))]:
        (root / folder).mkdir(parents=True)
        for k in range(3):
            (root / folder / f"{k}.jpg").write_bytes(jpeg_bytes(solid(color, (90, 70))))
    (root / "empty_class").mkdir()
    (root / "README.md").write_text("top-level files are ignored")
    res = run(root, tmp_path / "out")
    assert res.manifest["layout"] == "generic"
    classes = load_classes(tmp_path / "out")
    assert [c["wnid"] for c in classes] == ["cat", "golden_retriever", "zebra"]
    assert [c["name"] for c in classes] == ["cat", "golden retriever", "zebra"]
    assert classes[1]["prompt"] == "a photo of a golden retriever"
    assert res.manifest["empty_classes"] == ["empty_class"]
    # The same tree zipped inside a top folder gives the same arrays.
    zpath = tmp_path / "animals.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                zf.write(f, "animals/" + f.relative_to(root).as_posix())
    res_zip = run(zpath, tmp_path / "out_zip")
    assert res_zip.manifest["layout"] == "generic"
    for name in ("train_images.npy", "train_labels.npy"):
        assert np.array_equal(np.load(tmp_path / "out" / name), np.load(tmp_path / "out_zip" / name))


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="needs POSIX symlinks")
def test_symlinks_are_followed_but_every_folder_and_file_is_read_once(tmp_path):
    src = tmp_path / "src"
    train = src / "train"
    for folder, color, n in [("goldfish", GREEN, 1), ("cat", RED, 2)]:
        (train / folder).mkdir(parents=True)
        for k in range(n):
            (train / folder / f"{k}.jpg").write_bytes(jpeg_bytes(solid(color, (40, 30))))
    outside = tmp_path / "outside_shark"  # a class folder kept elsewhere, linked in (twice)
    outside.mkdir()
    for k in range(2):
        (outside / f"{k}.jpg").write_bytes(jpeg_bytes(solid(BLUE, (40, 30))))
    os.symlink("../..", train / "goldfish" / "loop")  # back up the tree: used to be walked ~40 levels deep
    os.symlink(outside, train / "shark")
    os.symlink(outside, train / "shark_again")  # the same real folder: not read a second time
    os.symlink("../goldfish/0.jpg", train / "cat" / "alias.jpg")  # the same real file under another name
    os.link(train / "cat" / "0.jpg", train / "cat" / "hard.jpg")  # a hard link is the same file too
    os.symlink("missing.jpg", train / "cat" / "gone.jpg")  # dangling

    res = run(src, tmp_path / "out", workers=1)
    m = res.manifest
    per_class = {w: c["train"] for w, c in m["per_class"].items()}
    assert per_class == {"cat": 2, "goldfish": 1, "shark": 2}
    assert m["counts"]["train"] == 5 and m["counts"]["skipped"] == 0 and m["skipped"] == []
    assert m["counts"]["duplicates"] == 2 and m["num_duplicates"] == 2
    assert {(d["path"], d["same_as"]) for d in m["duplicates"]} == {
        ("train/cat/alias.jpg", "train/goldfish/0.jpg"), ("train/cat/hard.jpg", "train/cat/0.jpg")}
    assert m["counts"]["broken_links"] == 1 and m["num_broken_links"] == 1
    assert [b["path"] for b in m["broken_links"]] == ["train/cat/gone.jpg"]
    # the two folder links that lead back to folders already read are reported, not walked
    assert {d["path"] for d in m["repeated_folders"]} == {"train/goldfish/loop", "train/shark_again"}
    assert m["empty_classes"] == ["shark_again"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_fifos_and_other_special_files_are_skipped_never_opened(tmp_path):
    src = tmp_path / "src"
    for folder, color in [("cat", RED), ("dog", BLUE)]:
        (src / folder).mkdir(parents=True)
        for k in range(2):
            (src / folder / f"{k}.jpg").write_bytes(jpeg_bytes(solid(color, (40, 30))))
    os.mkfifo(src / "cat" / "pipe.jpg")  # opening this for reading would wait for a writer forever
    os.symlink("../cat/pipe.jpg", src / "dog" / "link_to_pipe.jpg")
    out = tmp_path / "out"
    # In a subprocess with a time limit: a regression fails here instead of hanging the test run.
    script = (
        "import sys, json, numpy as np; sys.path.insert(0, sys.argv[3]); from dataprep.pipeline import preprocess\n"
        "embed = lambda ps: np.eye(len(ps), 384, dtype=np.float32)\n"
        "r = preprocess(sys.argv[1], sys.argv[2], embed_fn=embed, progress=False, val_fraction=0.0, workers=1)\n"
        "print(json.dumps(r.manifest))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(src), str(out), str(ROOT)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert m["counts"]["train"] == 4
    reasons = {s["path"]: s["reason"] for s in m["skipped"]}
    assert reasons == {"cat/pipe.jpg": "not a regular file (fifo)", "dog/link_to_pipe.jpg": "not a regular file (fifo)"}
    assert m["counts"]["skipped"] == 2 == m["num_skipped"]

    # The reader refuses one on its own too (a file swapped for a pipe after the scan), without opening it.
    with pytest.raises(NotRegularFileError, match=r"not a regular file \(fifo\)"):
        FolderSource(src).read_bytes("cat/pipe.jpg")


def test_tiny_imagenet_zip_and_extracted_folder_agree(tmp_path):
    zpath, wnids = make_tiny_zip(tmp_path / "tiny-imagenet-200.zip")
    res = run(zpath, tmp_path / "from_zip")
    assert res.manifest["layout"] == "tiny-imagenet" and res.manifest["names_from"] == "words.txt"
    assert res.manifest["counts"]["train"] == 3 * 6 and res.manifest["counts"]["skipped"] == 0
    assert res.manifest["empty_classes"] == ["n09999999"]
    assert res.manifest["counts"]["ignored_non_image_files"] == 3  # the boxes files
    classes = load_classes(tmp_path / "from_zip")
    assert [c["wnid"] for c in classes] == sorted(wnids)
    assert [c["name"] for c in classes] == ["tench", "goldfish", "great white shark"]
    # 64px sources at --size 64 are copied exactly (decoded, no resampling).
    src0 = np.asarray(Image.open(zipfile.ZipFile(zpath).open(f"tiny-imagenet-200/train/{TENCH}/images/{TENCH}_1.JPEG")))
    imgs = np.load(tmp_path / "from_zip" / "train_images.npy")
    assert np.array_equal(imgs[1], src0)
    # grayscale -> RGB with equal channels
    assert (imgs[0][..., 0] == imgs[0][..., 2]).all()

    folder = tmp_path / "extracted"
    zipfile.ZipFile(zpath).extractall(folder)
    for src in (folder, folder / "tiny-imagenet-200", folder / "tiny-imagenet-200" / "train"):
        out = tmp_path / f"from_{src.name}"
        r = run(src, out, workers=1)
        assert r.manifest["layout"] == "tiny-imagenet", src
        assert [c["name"] for c in load_classes(out)] == ["tench", "goldfish", "great white shark"]
        assert np.array_equal(np.load(out / "train_images.npy"), imgs)


# --------------------------------------------------------------------------- resizing


def guided_diffusion_reference(img: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion's center_crop_arr (box halving, bicubic, then crop), for comparison."""
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.array(img.convert("RGB"))
    y, x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[y: y + size, x: x + size]


def lanczos_reference(img: Image.Image, size: int) -> np.ndarray:
    """A slow, high-quality reference: full decode, center crop, one Lanczos resize."""
    w, h = img.size
    m = min(w, h)
    left, top = (w - m) // 2, (h - m) // 2
    return np.asarray(img.convert("RGB").crop((left, top, left + m, top + m)).resize((size, size), Image.LANCZOS))


@pytest.mark.parametrize("size", [64, 32])
def test_resize_quality_and_center_crop(size):
    # A smooth photo-like image, 500x375 like many ImageNet photos.
    yy, xx = np.mgrid[0:375, 0:500]
    arr = np.stack([128 + 100 * np.sin(xx / 37.0), 128 + 100 * np.cos(yy / 29.0), 128 + 100 * np.sin((xx + yy) / 50.0)],
                   -1).astype(np.uint8)
    data = jpeg_bytes(Image.fromarray(arr))
    with strict_pil():
        ours = decode_image(io.BytesIO(data), size).astype(int)
    gold = lanczos_reference(Image.open(io.BytesIO(data)), size).astype(int)
    guided = guided_diffusion_reference(Image.open(io.BytesIO(data)), size).astype(int)
    assert ours.shape == (size, size, 3)
    # JPEG draft decoding + box/bicubic stays as close to the slow reference as
    # guided-diffusion's resize-then-crop does (it is closer: the crop is exact).
    assert np.abs(ours - gold).mean() < 2.5
    assert np.abs(ours - gold).mean() <= np.abs(guided - gold).mean() + 0.5

    # Only the central square survives: blue borders left and right are cropped away.
    wide = np.zeros((200, 300, 3), np.uint8)
    wide[:] = (0, 0, 255)
    wide[:, 50:250] = (255, 0, 0)
    with strict_pil():
        out = decode_image(io.BytesIO(png_bytes(Image.fromarray(wide))), size)
    assert (out == np.array([255, 0, 0], np.uint8)).all()


def test_decompression_bomb_limit_is_configurable(tmp_path):
    limit_before = Image.MAX_IMAGE_PIXELS
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    (root / "a" / "big.png").write_bytes(png_bytes(Image.new("L", (1500, 1000), 7)))
    (root / "a" / "ok.png").write_bytes(png_bytes(Image.new("L", (100, 100), 7)))
    res = run(root, tmp_path / "out", max_pixels=1_000_000)
    assert res.manifest["counts"]["train"] == 1
    assert "DecompressionBomb" in res.manifest["skipped"][0]["reason"]
    assert Image.MAX_IMAGE_PIXELS == limit_before  # the caller's limit is restored
    res = run(root, tmp_path / "out2", workers=1)
    assert res.manifest["counts"]["train"] == 2
