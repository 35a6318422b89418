"""Hostile (and odd-but-valid) uploads for the Forward tab, each with its declared outcome.

Used by tests/test_web_fuzz.py: a decompression bomb, corrupt bytes named .png, a text file named
.jpg, a zero-byte file, a file over the upload limit ... and unusual images the app must read.
"""
from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from fuzz_runner import ANY, CLIENT, ERROR, OK

MAX_UPLOAD_MB = 10  # the default upload limit (--max-upload-mb)


# =============================================================== hostile uploads
def png_bytes(w: int, h: int, *, depth: int = 1, color: int = 0, idat: bytes | None = None,
              zero_rows: bool = False) -> bytes:
    """A PNG by hand: header-only lies about the size, or ``zero_rows`` for a real (huge) all-black image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    if zero_rows:
        row = b"\x00" * (1 + (w * depth + 7) // 8)
        z = zlib.compressobj(9)
        parts = [z.compress(row * 256) for _ in range(h // 256)] + [z.compress(row * (h % 256)), z.flush()]
        idat = b"".join(parts)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat or b"") + chunk(b"IEND", b"")


def image_file(path: Path, mode: str, size: tuple[int, int], fmt: str, **save) -> Path:
    rng = np.random.default_rng(len(str(path)))
    arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    im = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    im.save(path, fmt, **save)
    return path


def make_uploads(d: Path) -> list[tuple[str, Path, str, str | None]]:
    """(category, file, declared outcome, message) for the forward tab. The expected
    declared outcome (OK / ERROR / ANY / CLIENT) and message are written by hand: what a person reading
    the bytes expects (ANY where PIL's reading of a broken header is its own choice)."""
    d.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, Path, str, str | None]] = []

    def add(cat, name, data: bytes | None, expect, msg=None, build=None):
        p = d / name
        if build is not None:
            build(p)
        else:
            p.write_bytes(data)
        out.append((cat, p, expect, msg))

    not_image = "That file is not an image this app can read; upload a PNG, JPEG or WebP."
    add("upload: bomb", "bomb_20000.png", png_bytes(20000, 20000, zero_rows=True), ERROR)
    add("upload: bomb", "header_65535.png", png_bytes(65535, 65535, idat=zlib.compress(b"\x00" * 100)), ERROR)
    add("upload: bomb", "tall_strip.png", png_bytes(1, 2**31 - 1, idat=zlib.compress(b"\x00" * 100)), ERROR)
    jpg = d / "seed.jpg"
    image_file(jpg, "RGB", (16, 16), "JPEG")
    raw = bytearray(jpg.read_bytes())
    i = raw.index(b"\xff\xc0")
    raw[i + 5:i + 9] = struct.pack(">HH", 65000, 65000)
    add("upload: bomb", "bomb.jpg", bytes(raw), ERROR)
    gif = d / "seed.gif"
    image_file(gif, "P", (16, 16), "GIF")
    raw = bytearray(gif.read_bytes())
    raw[6:10] = struct.pack("<HH", 65535, 65535)
    add("upload: bomb", "bomb.gif", bytes(raw), ANY)  # PIL may take the frame's size, not the screen's
    add("upload: corrupt", "random.png", bytes(random.Random(1).randrange(256) for _ in range(4096)), ERROR,
        not_image)
    add("upload: corrupt", "sig_garbage.png", b"\x89PNG\r\n\x1a\n" + b"definitely not a png" * 50, ERROR, not_image)
    ok_png = image_file(d / "seed.png", "RGB", (40, 30), "PNG")
    add("upload: corrupt", "truncated.png", ok_png.read_bytes()[: ok_png.stat().st_size // 2], ERROR, not_image)
    add("upload: corrupt", "zero_width.png", png_bytes(0, 16, idat=zlib.compress(b"")), ERROR, None)
    add("upload: corrupt", "bad_crc_idat.png", png_bytes(16, 16, idat=b"\x00" * 64), ERROR, not_image)
    zbomb = png_bytes(8, 8, depth=8, idat=zlib.compress(b"\x00" * 9 * 8))
    ztxt = b"Comment\x00\x00" + zlib.compress(b"A" * (50 * 2**20), 9)  # a 50 MB text chunk in ~50 kB
    zchunk = struct.pack(">I", len(ztxt)) + b"zTXt" + ztxt + struct.pack(">I", zlib.crc32(b"zTXt" + ztxt))
    add("upload: bomb", "ztxt_bomb.png", zbomb[:33] + zchunk + zbomb[33:], ANY)
    add("upload: wrong type", "notes.jpg", b"hello, this is text\n" * 20, ERROR, not_image)
    add("upload: wrong type", "empty.png", b"", ERROR, not_image)
    add("upload: wrong type", "drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        ERROR, not_image)
    add("upload: wrong type", "script.png", b"#!/bin/sh\nrm -rf /\n", ERROR, not_image)
    add("upload: wrong type", "icon.ico", None, ERROR, "Unsupported image type ICO; upload a PNG, JPEG, WebP, GIF, "
        "BMP or TIFF.", build=lambda p: image_file(p, "RGBA", (32, 32), "ICO"))
    add("upload: wrong type", "image.pdf", None, ERROR, not_image,
        build=lambda p: image_file(p, "RGB", (16, 16), "PDF"))
    # valid, if unusual, images
    add("upload: valid", "ok.png", ok_png.read_bytes(), OK)
    add("upload: valid", "one_pixel.png", None, OK, build=lambda p: image_file(p, "RGB", (1, 1), "PNG"))
    add("upload: valid", "strip_1x3000.png", None, OK, build=lambda p: image_file(p, "L", (1, 3000), "PNG"))
    add("upload: valid", "rgba.png", None, OK, build=lambda p: image_file(p, "RGBA", (33, 17), "PNG"))
    add("upload: valid", "grey16.png", None, OK, build=lambda p: image_file(p, "I;16", (20, 20), "PNG"))
    add("upload: valid", "cmyk.jpg", None, OK, build=lambda p: image_file(p, "CMYK", (24, 24), "JPEG"))
    add("upload: valid", "anim.gif", None, OK,
        build=lambda p: image_file(p, "P", (16, 16), "GIF", save_all=True,
                                   append_images=[Image.new("P", (16, 16), 3)] * 3))
    add("upload: valid", "img.bmp", None, OK, build=lambda p: image_file(p, "RGB", (20, 10), "BMP"))
    add("upload: valid", "img.tiff", None, OK, build=lambda p: image_file(p, "RGB", (20, 10), "TIFF"))
    add("upload: valid", "img.webp", None, OK, build=lambda p: image_file(p, "RGB", (20, 10), "WEBP"))
    add("upload: valid", "png_named.jpg", ok_png.read_bytes(), OK)
    add("upload: valid", "weird name ;$(x) \u91d1.png", ok_png.read_bytes(), ANY)
    add("upload: valid", "4096x4096.png", None, OK, build=lambda p: Image.new("1", (4096, 4096)).save(p))
    add("upload: too big", "big.png", None, CLIENT, "maximum file size",
        build=lambda p: p.write_bytes(ok_png.read_bytes() + b"\x00" * (MAX_UPLOAD_MB * 2**20 + 1)))
    return out
