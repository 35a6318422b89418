"""preprocess.py, the dataprep package and its Dataset: subsets, determinism, Dataset, CLI, download, real data.

Most tests pass a cheap deterministic ``embed_fn``; one test loads the real
text encoder. Tests on ``../shared/data`` skip when it is absent. Layouts and
hostile inputs are in test_preprocess_sources.py, interruption and re-runs in
test_preprocess_resume.py; both take their helpers and fixtures from here.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import pickle
import shutil
import struct
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

import preprocess as preprocess_cli  # noqa: E402
from dataprep.defaults import PreprocessError  # noqa: E402
from dataprep.download import download  # noqa: E402
from dataprep.layout import ClassInfo, select_classes  # noqa: E402
from dataprep.pipeline import Result, preprocess  # noqa: E402
from conftest import require_environment, shared_data_dir  # noqa: E402
from dataprep.dataset import PreprocessedDataset, load_classes  # noqa: E402
from models.text_encoder import PROMPT_TEMPLATES, TEXT_EMBED_DIM  # noqa: E402
from core.prompting import RICH_TEMPLATES  # noqa: E402


TENCH, GOLDFISH, SHARK, TIGER_SHARK = "n01440764", "n01443537", "n01484850", "n01491361"


def fake_embed(prompts: list[str]) -> np.ndarray:
    """A deterministic stand-in for the text encoder: one unit vector per prompt text."""
    out = np.empty((len(prompts), TEXT_EMBED_DIM), np.float32)
    for i, p in enumerate(prompts):
        seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(TEXT_EMBED_DIM)
        out[i] = v / np.linalg.norm(v)
    return out


def shared_data() -> Path:
    return shared_data_dir()


def run(src, out, **kw) -> Result:
    kw.setdefault("embed_fn", fake_embed)
    kw.setdefault("progress", False)
    kw.setdefault("val_fraction", 0.0)
    kw.setdefault("workers", 2)
    return preprocess(src, out, **kw)


# --------------------------------------------------------------------------- synthetic files


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def solid(color, size=(120, 90), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def jpeg_with_declared_size(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to claim ``width`` x ``height``."""
    data = bytearray(jpeg_bytes(solid(RED, (16, 16))))
    at = data.index(b"\xff\xc0")
    data[at + 5: at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size but holds almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)

# file name -> (bytes factory, expected outcome). Outcome: an RGB colour it
# should come out as (approximately), "gray", or "skip:<reason substring>".
GOOD_PER_CLASS = 3


def tree_files() -> dict[str, dict[str, tuple[bytes, object]]]:
    full = jpeg_bytes(Image.effect_noise((200, 150), 60).convert("RGB"))
    return {
        TENCH: {
            **{f"tench_{k}.JPEG": (jpeg_bytes(solid(RED, s)), RED) for k, s in
               enumerate([(300, 200), (200, 300), (64, 64)])},
            "tench_small.JPEG": (jpeg_bytes(solid(RED, (40, 30))), RED),  # upscaled
            "truncated.JPEG": (full[: len(full) // 2], "skip:truncated"),
            "notes.txt": (b"not an image", "ignored"),
        },
        GOLDFISH: {
            **{f"goldfish_{k}.JPEG": (jpeg_bytes(solid(GREEN)), GREEN) for k in range(GOOD_PER_CLASS)},
            "gray.JPEG": (jpeg_bytes(solid(128, mode="L")), "gray"),
            "cmyk.JPEG": (jpeg_bytes(solid((0, 255, 255, 0), mode="CMYK")), (255, 0, 0)),
            "png_named.JPEG": (png_bytes(solid((0, 0, 255, 255), mode="RGBA")), (0, 0, 255)),
            "zero.JPEG": (b"", "skip:empty"),
            "text.JPEG": (b"hello, I am not a JPEG\n" * 10, "skip:UnidentifiedImageError"),
        },
        SHARK: {
            **{f"shark_{k}.JPEG": (jpeg_bytes(solid(BLUE)), BLUE) for k in range(GOOD_PER_CLASS)},
            "bomb.JPEG": (png_header_only(100_000, 100_000), "skip:DecompressionBomb"),
            "bomb_warn.png": (png_header_only(12_000, 10_000), "skip:DecompressionBomb"),
            "bomb_jpeg.JPEG": (jpeg_with_declared_size(60_000, 50_000), "skip:DecompressionBomb"),
            "jpeg_named.png": (jpeg_bytes(solid(BLUE)), BLUE),
        },
        TIGER_SHARK: {},  # an empty class folder
    }


def write_tree(base: Path, files, mapping: bool = True) -> Path:
    train = base / "train"
    for wnid, entries in files.items():
        d = train / wnid
        d.mkdir(parents=True, exist_ok=True)
        for name, (data, _) in entries.items():
            (d / name).write_bytes(data)
    if mapping:
        (base / "LOC_synset_mapping.txt").write_text(
            f"{TENCH} tench, Tinca tinca\n{GOLDFISH} goldfish, Carassius auratus\n"
            f"{SHARK} great white shark, white shark\n{TIGER_SHARK} tiger shark, Galeocerdo cuvieri\n"
        )
    return base


@pytest.fixture(scope="module")
def ilsvrc_tree(tmp_path_factory) -> tuple[Path, dict]:
    files = tree_files()
    return write_tree(tmp_path_factory.mktemp("ilsvrc"), files), files


@pytest.fixture(scope="module")
def ilsvrc_out(ilsvrc_tree, tmp_path_factory) -> tuple[Path, Result, dict]:
    base, files = ilsvrc_tree
    out = tmp_path_factory.mktemp("out") / "pre"
    return out, run(base, out), files


def make_tiny_zip(path: Path, n_classes: int = 3, per_class: int = 6, size: int = 64) -> tuple[Path, list[str]]:
    wnids = [TENCH, GOLDFISH, SHARK, TIGER_SHARK, "n01494475"][:n_classes]
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        # wnids.txt lists one class with no folder: it is left out (and reported).
        zf.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids + ["n09999999"]) + "\n")
        zf.writestr(
            "tiny-imagenet-200/words.txt",
            f"{TENCH}\ttench, Tinca tinca\n{GOLDFISH}\tgoldfish, Carassius auratus\n"
            f"{SHARK}\tgreat white shark\n{TIGER_SHARK}\ttiger shark\nn01494475\thammerhead\nn00000001\tentity\n",
        )
        for i, w in enumerate(wnids):
            zf.writestr(f"tiny-imagenet-200/train/{w}/{w}_boxes.txt", "0 0 1 1\n")
            for k in range(per_class):
                arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                mode = "L" if k == 0 else "RGB"
                img = Image.fromarray(arr).convert(mode)
                zf.writestr(f"tiny-imagenet-200/train/{w}/images/{w}_{k}.JPEG", jpeg_bytes(img))
        zf.writestr("tiny-imagenet-200/val/val_annotations.txt", "ignored\n")
    return path, wnids


# --------------------------------------------------------------------------- subsets, split, determinism


def test_classes_max_per_class_val_split_and_determinism(tmp_path):
    zpath, wnids = make_tiny_zip(tmp_path / "t.zip", n_classes=5, per_class=10)
    kw = dict(classes=f"goldfish,{SHARK},Tiger Shark", max_per_class=8, val_fraction=0.25, seed=3)
    a = run(zpath, tmp_path / "a", workers=2, chunk_size=3, **kw)
    b = run(zpath, tmp_path / "b", workers=1, **kw)
    assert [c["wnid"] for c in load_classes(tmp_path / "a")] == [GOLDFISH, SHARK, TIGER_SHARK]
    assert a.manifest["counts"] == b.manifest["counts"]
    assert a.manifest["counts"]["train"] == 3 * 6 and a.manifest["counts"]["val"] == 3 * 2
    assert a.manifest["per_class"][GOLDFISH] == {"train": 6, "val": 2}
    for name in ("train_images.npy", "train_labels.npy", "val_images.npy", "val_labels.npy", "class_embeddings.npy"):
        assert np.array_equal(np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name)), name
    assert (np.diff(np.load(tmp_path / "a" / "train_labels.npy")) >= 0).all()  # class-major order
    # Another seed picks another subset; a class-list file works too.
    listing = tmp_path / "classes.txt"
    listing.write_text(f"# my subset\n{GOLDFISH} goldfish\ngreat white shark\ntiger shark\n")
    c = run(zpath, tmp_path / "c", **{**kw, "seed": 4, "classes": str(listing)})
    assert [x["wnid"] for x in load_classes(tmp_path / "c")] == [GOLDFISH, SHARK, TIGER_SHARK]
    assert not np.array_equal(np.load(tmp_path / "a" / "val_images.npy"), np.load(tmp_path / "c" / "val_images.npy"))
    with pytest.raises(PreprocessError, match="unknown classes: 'unicorn'"):
        run(zpath, tmp_path / "d", classes="goldfish,unicorn")


def test_ambiguous_class_name_asks_for_a_wnid():
    classes = [ClassInfo("n02012849", ["crane"]), ClassInfo("n03126707", ["crane"]), ClassInfo("n1", ["x"])]
    with pytest.raises(PreprocessError, match="ambiguous"):
        select_classes(classes, ["crane"])
    assert [c.wnid for c in select_classes(classes, ["N03126707"])] == ["n03126707"]


# --------------------------------------------------------------------------- Dataset


def test_dataset_items_flips_pickling_and_errors(tmp_path, ilsvrc_out):
    out = ilsvrc_out[0]
    ds = PreprocessedDataset(out, split="train")
    assert len(ds) == ilsvrc_out[1].manifest["counts"]["train"]
    assert ds.image_size == 64 and ds.num_classes == 3 and ds.class_names == ["tench", "goldfish", "great white shark"]
    assert ds.class_embeddings.dtype == torch.float32 and ds.class_embeddings.shape == (3, TEXT_EMBED_DIM)
    assert ds.template_embeddings.shape == (3, ds.manifest["training_prompts_per_class"], TEXT_EMBED_DIM)
    assert ds.manifest["layout"] == "ilsvrc" and ds.root == out
    assert isinstance(ds.images, np.memmap)
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, 64, 64) and isinstance(y, int)
    assert -1.0 <= x.min() and x.max() <= 1.0
    assert torch.allclose(x, torch.from_numpy(np.array(ds.images[0])).permute(2, 0, 1).float() / 127.5 - 1)
    assert len(PreprocessedDataset(out, split="val")) == 0

    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 50_000
    assert torch.equal(clone[3][0], ds[3][0]) and clone[3][1] == ds[3][1]

    # Flips: an asymmetric image, flipped about half the time, reproducibly under torch.manual_seed.
    root = tmp_path / "lr"
    (root / "half").mkdir(parents=True)
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, 32:] = 255
    (root / "half" / "a.png").write_bytes(png_bytes(Image.fromarray(arr)))
    run(root, tmp_path / "lr_out")
    flip = PreprocessedDataset(tmp_path / "lr_out", flip=True)
    torch.manual_seed(0)
    seq = [flip[0][0][0, 0, 0].item() for _ in range(200)]
    torch.manual_seed(0)
    assert seq == [flip[0][0][0, 0, 0].item() for _ in range(200)]
    assert 60 < seq.count(1.0) < 140 and set(seq) == {-1.0, 1.0}
    assert PreprocessedDataset(tmp_path / "lr_out")[0][0][0, 0, 0].item() == -1.0

    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 64, 64) and yb.tolist() == [ds[i][1] for i in range(4)]

    with pytest.raises(FileNotFoundError, match="preprocess.py --src"):
        PreprocessedDataset(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "class_embeddings.npy").unlink()
    with pytest.raises(FileNotFoundError, match="class_embeddings.npy"):
        PreprocessedDataset(broken)
    (broken / "template_embeddings.npy").unlink()
    shutil.copy(out / "class_embeddings.npy", broken / "class_embeddings.npy")
    assert PreprocessedDataset(broken).template_embeddings is None
    with pytest.raises(ValueError):
        PreprocessedDataset(out, split="test")


# --------------------------------------------------------------------------- CLI and download


def test_cli_help_and_main(tmp_path, ilsvrc_tree, capsys):
    with pytest.raises(SystemExit) as e:
        preprocess_cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("ILSVRC", "Tiny ImageNet", "generic", "--val-fraction", "--download", "--prompt-template"):
        assert word in text
    base, _ = ilsvrc_tree
    out = tmp_path / "cli"
    rc = preprocess_cli.main(["--src", str(base), "--out", str(out), "--size", "32", "--val-fraction", "0.3", "--workers", "2",
                 "--prompt-template", "a blurry photo of a {}", "--classes", "tench,goldfish", "-q"],
                embed_fn=fake_embed)
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["options"]["prompt_template"] == "a blurry photo of a {}" and m["image_size"] == 32
    # 5 + 8 image files in the two classes; the val pick is per class, before decoding
    assert m["counts"]["train"] + m["counts"]["val"] + m["counts"]["skipped"] == 13 and m["counts"]["val"] >= 2
    assert load_classes(out)[1]["prompt"] == "a blurry photo of a goldfish"
    assert preprocess_cli.main(["--src", str(tmp_path / "nope"), "--out", str(out)], embed_fn=fake_embed) == 2
    assert preprocess_cli.main(["--src", str(base), "--out", str(tmp_path / "x"), "--prompt-template", "no braces"],
                  embed_fn=fake_embed) == 2


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``data`` with Range support; the first ``drop`` responses stop half-way."""

    data = b""
    drop = 0
    ranges: list = []

    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):
        cls = type(self)
        total = len(cls.data)
        start = 0
        rng = self.headers.get("Range")
        cls.ranges.append(rng)
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= total:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        else:
            self.send_response(200)
        body = cls.data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.drop > 0:
            cls.drop -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    handler = type("H", (RangeHandler,), {"data": b"", "drop": 0, "ranges": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/tiny-imagenet-200.zip"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_resumes_with_range_and_checks_the_checksum(tmp_path, server):
    handler, url = server
    handler.data = bytes(np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8))
    sha = hashlib.sha256(handler.data).hexdigest()
    handler.drop = 2  # the connection drops twice mid-file
    dest = download(url, tmp_path / "dl" / "f.zip", sha256=sha, progress=False, block_size=4096)
    assert dest.read_bytes() == handler.data and not (tmp_path / "dl" / "f.zip.part").exists()
    assert handler.ranges[0] is None and all(r and r.startswith("bytes=") for r in handler.ranges[1:])
    assert len(handler.ranges) == 3

    # An existing .part (e.g. from an earlier, killed run) is continued, not restarted.
    handler.ranges.clear()
    part = tmp_path / "dl2" / "f.zip.part"
    part.parent.mkdir()
    part.write_bytes(handler.data[:100_000])
    download(url, tmp_path / "dl2" / "f.zip", sha256=sha, progress=False)
    assert handler.ranges == ["bytes=100000-"]
    # A complete .part gets 416 and is accepted after the checksum check.
    handler.ranges.clear()
    (tmp_path / "dl2" / "f.zip").rename(part)
    download(url, tmp_path / "dl2" / "f.zip", md5=hashlib.md5(handler.data).hexdigest(), progress=False)
    assert handler.ranges == ["bytes=300000-"] and (tmp_path / "dl2" / "f.zip").is_file()
    # A finished file that matches is reused without a request.
    handler.ranges.clear()
    download(url, tmp_path / "dl2" / "f.zip", sha256=sha, progress=False)
    assert handler.ranges == []

    with pytest.raises(PreprocessError, match="checksum mismatch"):
        download(url, tmp_path / "dl3" / "f.zip", sha256="0" * 64, progress=False)
    assert not (tmp_path / "dl3" / "f.zip").exists() and (tmp_path / "dl3" / "f.zip.bad").exists()


def test_cli_download_then_preprocess(tmp_path, server):
    handler, url = server
    zpath, _ = make_tiny_zip(tmp_path / "served.zip")
    handler.data = zpath.read_bytes()
    handler.drop = 1
    sha = hashlib.sha256(handler.data).hexdigest()
    out = tmp_path / "out"
    rc = preprocess_cli.main(["--download", "tiny-imagenet", "--download-url", url, "--sha256", sha, "--download-dir",
                 str(tmp_path / "downloads"), "--out", str(out), "-q"], embed_fn=fake_embed)
    assert rc == 0
    assert (tmp_path / "downloads" / "tiny-imagenet-200.zip").read_bytes() == handler.data
    ds = PreprocessedDataset(out)
    assert ds.manifest["layout"] == "tiny-imagenet" and ds.num_classes == 3
    assert len(ds) + len(PreprocessedDataset(out, "val")) == 18


# --------------------------------------------------------------------------- real data and the real encoder


@pytest.mark.real_data
def test_shared_tiny_imagenet_ten_class_subset(tmp_path):
    zpath = shared_data() / "tiny-imagenet-200.zip"
    if not zpath.is_file():
        require_environment(f"{zpath} is missing")
    wnids = sorted(zipfile.ZipFile(zpath).read("tiny-imagenet-200/wnids.txt").decode().split())
    assert len(wnids) == 200
    res = run(zpath, tmp_path / "tiny10", classes=",".join(wnids[:10]), max_per_class=20, val_fraction=0.1)
    assert res.manifest["counts"]["train"] == 10 * 18 and res.manifest["counts"]["val"] == 10 * 2
    assert res.manifest["counts"]["skipped"] == 0 and res.manifest["layout"] == "tiny-imagenet"
    ds = PreprocessedDataset(tmp_path / "tiny10", flip=True)
    assert ds.class_names[0] == "goldfish" and ds.classes[0]["wnid"] == "n01443537"
    assert ds.images.shape == (180, 64, 64, 3)
    x, y = ds[179]
    assert x.shape == (3, 64, 64) and y == 9 and -1 <= x.min() <= x.max() <= 1
    assert 40 < ds.images[:].mean() < 200  # real photos, not zeros


@pytest.mark.real_data
def test_shared_imagenet_sample_full_size_jpegs(tmp_path):
    src = shared_data() / "imagenet-sample"
    if not (src / "train").is_dir():
        require_environment(f"{src}/train is missing")
    res = run(src, tmp_path / "sample", size=32)
    m = res.manifest
    assert m["layout"] == "ilsvrc" and m["counts"]["train"] == 66 and m["counts"]["skipped"] == 0
    assert m["names_from"] == "LOC_synset_mapping.txt"
    classes = load_classes(tmp_path / "sample")
    assert len(classes) == 66 and classes[0]["wnid"] == "n01440764" and classes[0]["name"] == "tench"
    imgs = np.load(tmp_path / "sample" / "train_images.npy")
    assert imgs.shape == (66, 32, 32, 3)
    gray = [i for i in range(66) if (imgs[i, ..., 0] == imgs[i, ..., 1]).all() and (imgs[i, ..., 1] == imgs[i, ..., 2]).all()]
    assert len(gray) == 3
    assert imgs.std(axis=(1, 2, 3)).min() > 5  # no blank outputs


def test_real_text_encoder_embeddings(tmp_path, ilsvrc_tree):
    from models.text_encoder import encode_prompts

    base, _ = ilsvrc_tree
    out = tmp_path / "real"
    res = preprocess(base, out, progress=False, val_fraction=0.0, classes=["goldfish", "tench"])
    assert res.manifest["text_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    emb = np.load(out / "class_embeddings.npy")
    tmpl = np.load(out / "template_embeddings.npy")
    assert emb.shape == (2, TEXT_EMBED_DIM) and tmpl.shape[:1] == (2,) and tmpl.shape[2] == TEXT_EMBED_DIM
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(emb, encode_prompts(["a photo of a tench", "a photo of a goldfish"]), atol=1e-5)
    np.testing.assert_allclose(tmpl[1, 1], encode_prompts(["a picture of a goldfish"])[0], atol=1e-5)
    # "goldfish" is nearer "a photo of a goldfish" than "tench" is
    q = encode_prompts(["goldfish"])[0]
    assert emb[1] @ q > emb[0] @ q


def test_training_text_variants_and_descriptions(tmp_path, ilsvrc_tree):
    base, _ = ilsvrc_tree
    desc = tmp_path / "desc.tsv"
    desc.write_text(f"# test descriptions\n{TENCH}\ta greenish fish held up by an angler\n")
    rich = preprocess(base, tmp_path / "rich", progress=False, embed_fn=fake_embed, descriptions=desc)
    classes = load_classes(tmp_path / "rich")
    tench = next(c for c in classes if c["wnid"] == TENCH)
    assert tench["training_prompts"][: len(RICH_TEMPLATES)] == [t.format("tench") for t in RICH_TEMPLATES]
    assert "a picture of a Tinca tinca" in tench["training_prompts"]  # a WordNet synonym
    assert tench["training_prompts"][-1] == "a greenish fish held up by an angler"
    assert rich.manifest["text_variants"] == "rich" and rich.manifest["descriptions"]["classes_described"] == 1
    tmpl = np.load(tmp_path / "rich" / "template_embeddings.npy")
    assert tmpl.shape[1] == rich.manifest["training_prompts_per_class"] == max(len(c["training_prompts"]) for c in classes)
    assert any(np.allclose(r, fake_embed(["a greenish fish held up by an angler"])[0]) for r in tmpl[tench["index"]])

    basic = preprocess(base, tmp_path / "basic", progress=False, embed_fn=fake_embed, text_variants="basic")
    assert np.load(tmp_path / "basic" / "template_embeddings.npy").shape[1] == len(PROMPT_TEMPLATES)
    assert basic.manifest["config_hash"] != rich.manifest["config_hash"]
    # other descriptions are other training data: the finished folder is not silently reused
    desc.write_text(f"{TENCH}\ta different description\n")
    with pytest.raises(PreprocessError, match="already exists"):
        preprocess(base, tmp_path / "rich", progress=False, embed_fn=fake_embed, descriptions=desc)
    with pytest.raises(PreprocessError, match="needs --text-variants rich"):
        preprocess(base, tmp_path / "x", progress=False, embed_fn=fake_embed, text_variants="basic", descriptions=desc)
    desc.write_text("no tab on this line\n")
    with pytest.raises(PreprocessError, match="desc.tsv:1"):
        preprocess(base, tmp_path / "y", progress=False, embed_fn=fake_embed, descriptions=desc)
