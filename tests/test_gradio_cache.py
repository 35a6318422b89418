"""webui.gradio_cache: gradio's image cache never hands out a half-written file.

The oracle is the file itself: while one thread saves the same picture over and over (as two
requests returning it at once do), another keeps reading the cached file, and every read must be
the whole encoded image. Gradio's own save (a plain ``write_bytes``) fails this.
"""
from __future__ import annotations

import threading

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


@pytest.mark.slow
def test_gradio_own_save_does_hand_out_half_written_files(tmp_path):
    """The finding behind the module: without it, reads catch the file truncated (the check above
    can fail)."""
    bad, total = reads_while_saving(ORIGINAL_SAVE, tmp_path, rounds=3000)
    assert bad > 0, f"all {total} reads were whole: gradio's save may be atomic now (then drop the patch)"
