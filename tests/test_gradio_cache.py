"""webui.gradio_cache: gradio's image cache never hands out a half-written file.

The oracle is the file itself: while one thread saves the same picture over and over (as two
requests returning it at once do), another keeps reading the cached file, and every read must be
the whole encoded image. The interleaving that breaks gradio's own save (a plain ``write_bytes``)
is then forced: a read while a write is halfway through.
"""
from __future__ import annotations

import builtins
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from gradio import processing_utils

from webui import gradio_cache

ORIGINAL_SAVE = processing_utils.save_pil_to_cache


def reads_while_saving(save, tmp_path, rounds: int = 400) -> tuple[int, int]:
    """(reads that were not the whole image, total reads) while ``save`` rewrites one image."""
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    old = processing_utils.save_pil_to_cache
    processing_utils.save_pil_to_cache = save
    try:
        path = processing_utils.save_img_array_to_cache(arr, str(tmp_path), format="png")
        whole = open(path, "rb").read()
        done, bad, total = threading.Event(), [0], [0]

        def writer():
            for _ in range(rounds):
                assert processing_utils.save_img_array_to_cache(arr, str(tmp_path), format="png") == path
            done.set()

        t = threading.Thread(target=writer)
        t.start()
        while not done.is_set():
            with open(path, "rb") as f:
                got = f.read()
            total[0] += 1
            bad[0] += got != whole
        t.join()
        return bad[0], total[0]
    finally:
        processing_utils.save_pil_to_cache = old


def test_reads_see_the_whole_image_while_it_is_saved_again(tmp_path):
    bad, total = reads_while_saving(gradio_cache.save_pil_to_cache, tmp_path)
    assert total > 0 and bad == 0, f"{bad} of {total} reads were not the whole image"


def test_the_same_path_and_bytes_as_gradio(tmp_path):
    img = processing_utils.Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    ours = gradio_cache.save_pil_to_cache(img, str(tmp_path / "a"), format="png")
    theirs = ORIGINAL_SAVE(img, str(tmp_path / "b"), format="png")
    assert ours.replace(str(tmp_path / "a"), "") == theirs.replace(str(tmp_path / "b"), "")
    assert open(ours, "rb").read() == open(theirs, "rb").read()


def test_install_routes_gradio_image_outputs_through_it(tmp_path, monkeypatch):
    monkeypatch.setattr(processing_utils, "save_pil_to_cache", ORIGINAL_SAVE)
    gradio_cache.install()
    assert processing_utils.save_pil_to_cache is gradio_cache.save_pil_to_cache


class WritesPausedHalfway:
    """Every file the saving thread opens for writing stops halfway through its first write (half
    the bytes on disk, flushed) until the reader has read: the interleaving a busy server hits by
    chance, forced. Hooks ``open`` itself (``io.open``, which ``Path.write_bytes`` calls, and the
    builtin), so it is the same for any way of saving."""

    def __init__(self, monkeypatch, under: Path):
        self.under, self.writer = under, None
        self.paused, self.resume, self.pauses = threading.Event(), threading.Event(), 0
        real_open = io.open

        def hooked_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if threading.current_thread() is self.writer and "w" in mode and Path(file).is_relative_to(self.under):
                return self._pausing(f)
            return f

        monkeypatch.setattr(io, "open", hooked_open)
        monkeypatch.setattr(builtins, "open", hooked_open)

    def _pausing(self, f):
        hook = self

        class PausingFile:
            def __init__(self):
                self.first = True

            def write(self, data):
                if not self.first:
                    return f.write(data)
                self.first, view = False, memoryview(data)
                n = f.write(view[: len(view) // 2])
                f.flush()
                hook.pauses += 1
                hook.paused.set()
                assert hook.resume.wait(30), "the reader never read"
                return n + f.write(view[len(view) // 2:])

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def __getattr__(self, name):
                return getattr(f, name)

        return PausingFile()

    def read_during_save(self, save, arr, cache_dir: Path, path: Path) -> bytes | None:
        """Run ``save`` in a thread; read ``path`` while its write is paused (or once it is done if it
        writes nothing). Returns what the read saw, None when no file was there."""
        done = threading.Event()

        def run():
            try:
                assert processing_utils.save_img_array_to_cache(arr, str(cache_dir), format="png") == str(path)
            finally:
                done.set()

        old = processing_utils.save_pil_to_cache
        processing_utils.save_pil_to_cache = save
        try:
            self.writer = threading.Thread(target=run)
            self.writer.start()
            while not (self.paused.wait(0.01) or done.is_set()):
                pass
            try:
                seen = path.read_bytes()
            except FileNotFoundError:
                seen = None
            self.resume.set()
            self.writer.join(30)
            assert done.is_set(), "the save did not finish"
            self.paused.clear()
            self.resume.clear()
            return seen
        finally:
            processing_utils.save_pil_to_cache = old


@pytest.mark.parametrize("cached", [False, True], ids=["first save", "saved again"])
def test_a_read_during_a_save_sees_the_whole_image_or_none_and_gradio_own_save_does_not(tmp_path, monkeypatch,
                                                                                       cached):
    """The finding behind the module, forced: a read while the file is being written. Gradio's
    save hands out the half-written file, on the first save and when the same picture is saved
    again (it truncates the cached file); ours shows nothing yet on the first save and the whole
    file when the picture is already cached (which it does not write again)."""
    arr = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    rel = Path(ORIGINAL_SAVE(processing_utils.Image.fromarray(arr), str(tmp_path / "ref"), format="png"))
    whole = rel.read_bytes()
    rel = rel.relative_to((tmp_path / "ref").resolve())
    hook = WritesPausedHalfway(monkeypatch, tmp_path)
    seen = {}
    for name, save in (("gradio", ORIGINAL_SAVE), ("ours", gradio_cache.save_pil_to_cache)):
        cache = (tmp_path / name).resolve()
        if cached:
            (cache / rel).parent.mkdir(parents=True)
            (cache / rel).write_bytes(whole)
        seen[name] = hook.read_during_save(save, arr, cache, cache / rel)
        assert (cache / rel).read_bytes() == whole  # after the save: the whole image either way
    assert seen["gradio"] is not None and len(seen["gradio"]) == len(whole) // 2 and whole.startswith(seen["gradio"])
    assert seen["ours"] == (whole if cached else None), (len(seen["ours"] or b""), len(whole))
    assert hook.pauses == (1 if cached else 2)  # gradio wrote each time; ours wrote only what was not cached
