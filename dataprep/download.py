"""Downloading a dataset (Tiny ImageNet) with resume, checksums and a progress bar."""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("preprocess")

from tqdm.auto import tqdm

from dataprep.defaults import PreprocessError

# --------------------------------------------------------------------------- download


def file_digests(path: str | os.PathLike, chunk: int = 1 << 20) -> dict[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


# Over 100 lines on purpose: one resumable, checksummed HTTP transfer whose steps (range request,
# partial file, retries, verification) share state; split, they would pass it back and forth.
def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    progress: bool = True,
    block_size: int = 1 << 16,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range requests.

    A dropped connection is retried (``retries`` times) from where it stopped;
    an interrupted run resumes the ``.part`` file next time. The finished file
    is checked against ``sha256`` and/or ``md5`` when given (its SHA-256 is
    always logged) and only then renamed to ``dest``. An existing ``dest`` that
    matches is reused.
    """

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    def verify(path: Path) -> dict[str, str]:
        d = file_digests(path)
        log.info("%s: sha256 %s, md5 %s", path.name, d["sha256"], d["md5"])
        if sha256 and d["sha256"].lower() != sha256.lower():
            raise PreprocessError(f"checksum mismatch for {url}: sha256 {d['sha256']}, expected {sha256}")
        if md5 and d["md5"].lower() != md5.lower():
            raise PreprocessError(f"checksum mismatch for {url}: md5 {d['md5']}, expected {md5}")
        return d

    if dest.exists():
        try:
            verify(dest)
            log.info("%s already downloaded", dest)
            return dest
        except PreprocessError:
            log.warning("%s does not match the expected checksum; downloading again", dest)
            dest.unlink()

    attempt = 0
    total: int | None = None
    bar = None
    while True:
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "preprocess.py"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status = resp.status
                if have and status == 206:
                    cr = resp.headers.get("Content-Range", "")
                    m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", cr)
                    if not m or int(m.group(1)) != have:
                        raise PreprocessError(f"server sent an unexpected Content-Range {cr!r}")
                    total = int(m.group(3)) if m.group(3) != "*" else None
                    mode = "ab"
                else:
                    if have:
                        log.info("server ignored the Range request; restarting the download")
                    have = 0
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length is not None else None
                    mode = "wb"
                if bar is None:
                    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                               disable=not progress)
                else:
                    bar.reset(total=total)
                    bar.update(have)
                with open(part, mode) as f:
                    while True:
                        block = resp.read(block_size)
                        if not block:
                            break
                        f.write(block)
                        bar.update(len(block))
            got = part.stat().st_size
            if total is not None and got < total:
                raise urllib.error.URLError(f"connection closed after {got} of {total} bytes")
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                # Range not satisfiable: the .part is already complete (or bigger than the file).
                cr = e.headers.get("Content-Range", "") if e.headers else ""
                m = re.match(r"bytes \*/(\d+)", cr)
                if m and int(m.group(1)) == have:
                    break
                part.unlink()
                continue
            raise PreprocessError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            attempt += 1
            if attempt > retries:
                raise PreprocessError(
                    f"download of {url} failed after {retries} retries: {e}; re-run to resume from {part}"
                ) from e
            log.warning("download interrupted (%s); resuming (attempt %d of %d)", e, attempt, retries)
            time.sleep(min(2.0 ** (attempt - 1) * 0.1, 10.0))
    if bar is not None:
        bar.close()
    try:
        verify(part)
    except PreprocessError:
        bad = part.with_name(part.name.replace(".part", ".bad"))
        os.replace(part, bad)
        raise
    os.replace(part, dest)
    return dest
