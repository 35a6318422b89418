"""Training's TensorBoard event files, read back by TensorBoard's own reader (the oracle): the
scalars and images arrive with their steps (a training run's: tests/test_training.py), and the CRC-32C matches a known vector."""
from __future__ import annotations

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from training.tensorboard import EventWriter, crc32c


def test_crc32c_matches_the_standard_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert crc32c(b"") == 0


def test_tensorboard_reads_what_the_writer_wrote(tmp_path):
    w = EventWriter(tmp_path / "tb")
    w.scalars(1, {"train/loss": 0.5, "train/lr": 1e-3})
    w.scalars(2, {"train/loss": 0.25, "skipped": float("nan")})
    img = np.zeros((6, 10, 3), np.uint8)
    img[:, :5] = (255, 0, 0)
    w.image(2, "samples/grid", img)
    w.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "train/lr"]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.5), (2, 0.25)]
    (im,) = acc.Images("samples/grid")
    assert (im.step, im.width, im.height) == (2, 10, 6)
    from io import BytesIO

    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(BytesIO(im.encoded_image_string)).convert("RGB")), img)
