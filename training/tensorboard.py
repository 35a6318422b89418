"""TensorBoard event files without TensorBoard: scalars and images, written as the TFRecord of
``Event`` protocol buffers that ``tensorboard --logdir RUN/tensorboard`` reads (the convention of
diffusers' training scripts, ``--report_to tensorboard``).

Only what training logs is encoded (an Event's wall time, step and a Summary of tagged scalars or
PNG images), by hand: the project does not need protobuf or TensorBoard to write them, and the
test suite reads them back with TensorBoard's own reader.
"""
from __future__ import annotations

import io
import os
import socket
import struct
import time
from pathlib import Path

import numpy as np


# --------------------------------------------------------------------------- TFRecord framing
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


# --------------------------------------------------------------------------- protobuf, by hand
def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def _event(wall_time: float, step: int, summary: bytes | None = None, file_version: str | None = None) -> bytes:
    msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        msg += _bytes_field(3, file_version.encode())
    if summary is not None:
        msg += _bytes_field(5, summary)
    return msg


def _scalar_value(tag: str, value: float) -> bytes:
    return _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(value)))


def _image_value(tag: str, image: np.ndarray) -> bytes:
    from PIL import Image

    img = np.asarray(image, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    h, w = img.shape[:2]
    channels = 1 if img.ndim == 2 else img.shape[2]
    encoded = (_field(1, 0, _varint(h)) + _field(2, 0, _varint(w)) + _field(3, 0, _varint(channels))
               + _bytes_field(4, buf.getvalue()))
    return _bytes_field(1, tag.encode()) + _bytes_field(4, encoded)


# --------------------------------------------------------------------------- the writer
class EventWriter:
    """Append scalars and images to ``<log_dir>/events.out.tfevents.<time>.<host>.<pid>``.

    A resumed run opens a new file in the same folder (TensorBoard reads them all in order);
    every write is flushed, so the board is current while training runs."""

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
        self.path = self.log_dir / name
        self._f = self.path.open("ab")
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        self._f.write(tfrecord(event))
        self._f.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = b"".join(_bytes_field(1, _scalar_value(tag, v)) for tag, v in values.items()
                           if v is not None and np.isfinite(v))
        if summary:
            self._write(_event(time.time(), step, summary))

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """``image``: (H, W, 3) or (H, W) uint8."""
        self._write(_event(time.time(), step, _bytes_field(1, _image_value(tag, image))))

    def close(self) -> None:
        self._f.close()
