"""The Train tab's data handling: paths stay under the data root, uploaded zips are checked before
they are kept (traversal names, symlinks, zip bombs, non-zips), and preparing a folder, a single
folder of pictures or a zip runs the project's preprocess."""
from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.app_server import make_picture_folders
from webui import train_data as td
from webui.validation import InputError


def fake_embed(prompts):
    rng = np.random.default_rng(len(prompts))
    v = rng.normal(size=(len(prompts), 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def png_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), color, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return path


@pytest.fixture()
def root(tmp_path) -> Path:
    r = tmp_path / "data"
    make_picture_folders(r / "shapes")
    return r


def test_names_must_stay_under_the_data_root(root, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    for bad in ["../secret", "/etc", "shapes/../../secret", "escape", "", "  ", "a\\b", "."]:
        with pytest.raises(InputError):
            td.resolve_under(root, bad)
    assert td.resolve_under(root, "shapes") == (root / "shapes").resolve()
    assert [d.name for d in td.list_data(root)] == ["shapes"]  # the symlink out is not listed


def test_prepare_a_folder_of_class_folders_and_a_single_folder_of_pictures(root):
    out = td.prepare(root, "shapes", 16, 0.25, embed_fn=fake_embed)
    assert out == (root / "shapes_16px").resolve()
    summary = td.summary(out)
    assert "2 class(es), 12 training + 4 held-out images at 16 px" in summary and "| red disc | 6 | 2 |" in summary
    strips = td.examples(out)
    assert [c for _, c in strips] == ["blue square", "red disc"]
    images, labels = np.load(out / "train_images.npy"), np.load(out / "train_labels.npy")
    for k, (strip, _) in enumerate(strips):  # each class's six training images side by side
        assert strip.shape == (16, 6 * 16, 3)
        assert np.array_equal(strip, np.concatenate(list(images[labels == k]), axis=1))
    listed = td.list_data(root)
    assert [(d.name, d.prepared) for d in listed] == [("shapes_16px", True), ("shapes", False)]
    with pytest.raises(InputError, match="already prepared"):
        td.prepare(root, "shapes_16px", 16, 0.1, embed_fn=fake_embed)

    cats = root / "my cats"
    cats.mkdir()
    for i in range(5):
        (cats / f"{i}.png").write_bytes(png_bytes((200, 150 + i, 100)))
    out = td.prepare(root, "my cats", 16, 0.0, embed_fn=fake_embed)
    classes = json.loads((out / "classes.json").read_text())["classes"]
    assert [c["name"] for c in classes] == ["my cats"] and len(np.load(out / "train_labels.npy")) == 5


def test_a_folder_with_no_usable_picture_fails_to_prepare_and_is_not_offered(root):
    junk = root / "junk"
    junk.mkdir()
    for i in range(5):
        (junk / f"{i}.jpg").write_bytes(b"not a picture")
    with pytest.raises(InputError, match=r"preparing 'junk' failed: none of its 5 file\(s\) could be read as a "
                                         r"picture \(0\.jpg: UnidentifiedImageError"):
        td.prepare(root, "junk", 16, 0.0, embed_fn=fake_embed)
    assert not (root / "junk_16px").exists()
    assert [(d.name, d.prepared) for d in td.list_data(root)] == [("junk", False), ("shapes", False)]  # not ready

    # one prepared (by an older version) with no picture in it is not listed as ready either
    td.prepare(root, "shapes", 16, 0.25, embed_fn=fake_embed)
    empty = root / "empty_16px"
    empty.mkdir()
    np.save(empty / "train_images.npy", np.zeros((0, 16, 16, 3), np.uint8))
    np.save(empty / "train_labels.npy", np.zeros(0, np.int64))
    assert [(d.name, d.prepared) for d in td.list_data(root)] == [("shapes_16px", True), ("junk", False),
                                                                  ("shapes", False)]


@pytest.mark.parametrize("size, frac, message", [(13, 0.1, "image size"), (16, 0.5, "held-out"),
                                                 (16, -0.1, "held-out")])
def test_bad_prepare_options_are_refused(root, size, frac, message):
    with pytest.raises(InputError, match=message):
        td.prepare(root, "shapes", size, frac, embed_fn=fake_embed)
    assert not (root / f"shapes_{size}px").exists()


def test_a_good_zip_is_kept_and_prepared_in_place(root, tmp_path):
    z = make_zip(tmp_path / "pets.zip", {"cat/a.png": png_bytes((250, 0, 0)), "cat/b.png": png_bytes((240, 10, 0)),
                                         "dog/a.png": png_bytes((0, 0, 250)), "dog/b.png": png_bytes((0, 10, 240)),
                                         "readme.txt": b"hello"})
    name = td.accept_zip(root, z, "My Pets!.zip", max_bytes=2**20)
    assert name == "My_Pets.zip" and (root / name).exists()
    assert td.accept_zip(root, z, "My Pets!.zip", max_bytes=2**20) == "My_Pets_2.zip"  # never overwrites
    assert ("My_Pets.zip", False) in [(d.name, d.prepared) for d in td.list_data(root)]
    out = td.prepare(root, name, 16, 0.0, embed_fn=fake_embed)
    assert out.name == "My_Pets_16px" and len(np.load(out / "train_labels.npy")) == 4


@pytest.mark.parametrize("members, symlink, message", [
    ({"../evil.png": b"x"}, None, "outside its own folder"),
    ({"/abs/evil.png": b"x"}, None, "outside its own folder"),
    ({"a/../../evil.png": b"x"}, None, "outside its own folder"),
    ({"C:/evil.png": b"x"}, None, "outside its own folder"),
    ({"a/ok.png": b"x"}, "a/link.png", "symbolic link"),
    ({"bomb/big.png": b"\0" * (64 * 2**20)}, None, "zip bomb"),
    ({"notes/a.txt": b"no pictures here"}, None, "no pictures"),
])
def test_hostile_zips_are_refused_before_they_are_kept(root, tmp_path, members, symlink, message):
    z = make_zip(tmp_path / "bad.zip", members, symlink)
    with pytest.raises(InputError, match=message):
        td.accept_zip(root, z, "bad.zip", max_bytes=2**30)
    assert not list(root.glob("*.zip"))


def test_not_a_zip_and_too_large_are_refused(root, tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(InputError, match="not a zip"):
        td.accept_zip(root, junk, "junk.zip", max_bytes=2**20)
    z = make_zip(tmp_path / "ok.zip", {"a/x.png": png_bytes((1, 2, 3))})
    with pytest.raises(InputError, match="limit"):
        td.accept_zip(root, z, "ok.zip", max_bytes=10)


def test_tiny_imagenet_classes_by_name_from_its_zip_downloaded_from_a_local_server(root, tmp_path):
    import functools
    import hashlib
    import http.server
    import threading

    from test_preprocess import make_tiny_zip

    with pytest.raises(InputError, match="no tiny-imagenet-200.zip"):
        td.prepare_tiny_imagenet(root, "goldfish", 16, 0.0, embed_fn=fake_embed)
    served = tmp_path / "mirror"
    served.mkdir()
    zpath, wnids = make_tiny_zip(served / "tiny-imagenet-200.zip", n_classes=3, per_class=4, size=24)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/tiny-imagenet-200.zip"
    try:
        with pytest.raises(InputError, match="download failed"):  # a wrong checksum is refused, nothing kept
            td.download_tiny_imagenet(root, url=url, md5="0" * 32)
        assert td.tiny_imagenet_zip(root) is None
        md5 = hashlib.md5(zpath.read_bytes()).hexdigest()
        assert td.download_tiny_imagenet(root, url=url, md5=md5) == root / "tiny-imagenet-200.zip"
    finally:
        httpd.shutdown()
    out = td.prepare_tiny_imagenet(root, "goldfish, great white shark", 16, 0.0, embed_fn=fake_embed)
    names = [c["name"] for c in json.loads((out / "classes.json").read_text())["classes"]]
    assert out.name == "tiny_goldfish-great-white-shark_16px" and sorted(names) == ["goldfish", "great white shark"]
    with pytest.raises(InputError, match="no_such_class|unknown|not found|No class"):
        td.prepare_tiny_imagenet(root, "no_such_class", 16, 0.0, embed_fn=fake_embed)
    with pytest.raises(InputError, match="Name some"):
        td.prepare_tiny_imagenet(root, " , ", 16, 0.0, embed_fn=fake_embed)
