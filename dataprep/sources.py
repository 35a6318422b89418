"""Where images come from: a folder (symlinks followed, each real file read once) or a zip read in place."""
from __future__ import annotations

import logging
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("preprocess")

from dataprep.defaults import IMAGE_EXTENSIONS, PreprocessError

# --------------------------------------------------------------------------- sources


class NotRegularFileError(OSError):
    """A path that is a FIFO, socket or device, not a file: reading it could block forever or have side effects."""


def _file_kind(mode: int) -> str:
    """A short name for what an ``st_mode`` describes (for reasons in the manifest)."""
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "unknown type"


# Entries of each list kept in the manifest (the counts are always complete).
MAX_LISTED = 1000


@dataclass
class ScanReport:
    """What a folder scan met besides plain files: the same file or folder reached again, dangling links,
    and special files. Zip sources have none of these."""

    # {"path", "same_as"}: one real file under a second name (symlink or hard link)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    # {"path", "same_as"}: a link to a folder already read (``loop -> ../..``), not walked again
    repeated_folders: list[dict[str, str]] = field(default_factory=list)
    broken_links: list[dict[str, str]] = field(default_factory=list)  # {"path", "target"}
    not_regular: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}: FIFOs, sockets, devices

    def any(self) -> bool:
        return bool(self.duplicates or self.repeated_folders or self.broken_links or self.not_regular)

    def summary(self) -> str:
        return (f"{len(self.duplicates)} duplicate files (one real file reached under several names), "
                f"{len(self.repeated_folders)} links to folders already read, {len(self.broken_links)} broken links, "
                f"{len(self.not_regular)} special files (FIFOs, sockets, devices) skipped")


class Source:
    """A zip archive or a folder, seen as a list of relative POSIX paths."""

    kind: str = "?"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.scan_report = ScanReport()  # filled in by ``files()`` where it applies

    def files(self) -> list[str]:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "type": self.kind}

    def close(self) -> None:  # pragma: no cover - trivial
        pass


class FolderSource(Source):
    kind = "folder"

    def files(self) -> list[str]:
        """Every non-hidden regular file below the folder, following symlinks.

        Each real folder is read once and each real file listed once, keyed by
        ``(st_dev, st_ino)``: a link back up the tree (``loop -> ../..``) would
        otherwise be walked until the path got too long, and a file reached under
        two names would be trained on twice. Real entries win over links: a
        folder's own files and subfolders are read first and links are followed
        afterwards, so a link never takes the name of a folder that is really in
        the tree. What was left out is in ``self.scan_report``.
        """
        report = self.scan_report = ScanReport()
        seen_dirs: dict[tuple[int, int], str] = {}
        seen_files: dict[tuple[int, int], str] = {}
        out: list[str] = []
        links: list[str] = []  # relative paths of symlinks, followed after all real entries

        def rel_of(rel_dir: str, name: str) -> str:
            return f"{rel_dir}/{name}" if rel_dir else name

        def add_special(rel: str, mode: int) -> None:
            report.not_regular.append({"path": rel, "reason": f"not a regular file ({_file_kind(mode)})"})

        def add_file(rel: str, key: tuple[int, int]) -> None:
            if key in seen_files:
                report.duplicates.append({"path": rel, "same_as": seen_files[key]})
                return
            seen_files[key] = rel
            out.append(rel)

        def walk(rel_dir: str, st: os.stat_result) -> None:
            """Read the real folder ``rel_dir`` and the real folders below it; queue the links met."""
            pending = [(rel_dir, st)]
            while pending:
                d, dst = pending.pop()
                if (dst.st_dev, dst.st_ino) in seen_dirs:  # a bind mount of a folder already read
                    report.repeated_folders.append({"path": d, "same_as": seen_dirs[(dst.st_dev, dst.st_ino)]})
                    continue
                seen_dirs[(dst.st_dev, dst.st_ino)] = d
                try:
                    with os.scandir(self.path / d if d else self.path) as it:
                        entries = sorted(it, key=lambda e: e.name)
                except OSError as e:
                    log.warning("cannot read folder %s: %s", self.path / d, e)
                    continue
                subdirs = []
                for e in entries:
                    if e.name.startswith("."):
                        continue
                    rel = rel_of(d, e.name)
                    try:
                        if e.is_symlink():
                            links.append(rel)
                        elif e.is_dir(follow_symlinks=False):
                            subdirs.append((rel, e.stat(follow_symlinks=False)))
                        else:
                            # stat, not the listing's inode number: on overlay filesystems only
                            # stat's (st_dev, st_ino) is sure to name one file (about 1 us a file).
                            fst = e.stat(follow_symlinks=False)
                            if stat.S_ISREG(fst.st_mode):
                                add_file(rel, (fst.st_dev, fst.st_ino))
                            else:
                                add_special(rel, fst.st_mode)
                    except OSError as err:  # vanished while scanning, or no permission
                        log.warning("cannot stat %s: %s", self.path / rel, err)
                pending.extend(reversed(subdirs))

        try:
            root_st = os.stat(self.path)
        except OSError as e:
            raise PreprocessError(f"cannot read --src {self.path}: {e}") from e
        walk("", root_st)
        # Links are followed only once the real tree is known, in the order met (so
        # the result does not depend on where a link sits relative to its target).
        i = 0
        while i < len(links):
            rel = links[i]
            i += 1
            path = self.path / rel
            try:
                st = os.stat(path)  # follows the link (and any chain of links); opens nothing
            except OSError:
                try:
                    target = os.readlink(path)
                except OSError:
                    target = "?"
                report.broken_links.append({"path": rel, "target": target})
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    report.repeated_folders.append({"path": rel, "same_as": seen_dirs[key]})
                else:
                    walk(rel, st)
            elif stat.S_ISREG(st.st_mode):
                add_file(rel, (st.st_dev, st.st_ino))
            else:
                add_special(rel, st.st_mode)
        return sorted(out)

    def read_bytes(self, rel: str) -> bytes:
        path = self.path / rel
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"not a regular file ({_file_kind(st.st_mode)})")
        # O_NONBLOCK: should the path have become a FIFO since the check, opening
        # returns at once instead of waiting for a writer; it changes nothing for files.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise NotRegularFileError(f"not a regular file ({_file_kind(mode)})")
            return f.read()


class ZipSource(Source):
    kind = "zip"

    def __init__(self, path: Path):
        super().__init__(path)
        self._zf: zipfile.ZipFile | None = None
        self._pid = -1

    @property
    def zf(self) -> zipfile.ZipFile:
        # One handle per process: a handle inherited over fork shares its file
        # offset with the parent and the other workers.
        if self._zf is None or self._pid != os.getpid():
            self._zf = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zf

    def files(self) -> list[str]:
        out = []
        for info in self.zf.infolist():
            name = info.filename
            if info.is_dir() or name.startswith("__MACOSX/"):
                continue
            if any(part.startswith(".") for part in name.split("/")):
                continue
            out.append(name)
        return sorted(out)

    def read_bytes(self, rel: str) -> bytes:
        return self.zf.read(rel)

    def identity(self) -> dict[str, Any]:
        st = self.path.stat()
        return {**super().identity(), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    def close(self) -> None:
        if self._zf is not None and self._pid == os.getpid():
            self._zf.close()
        self._zf = None

    def __getstate__(self):
        return {"path": self.path, "scan_report": ScanReport(), "_zf": None, "_pid": -1}


def open_source(src: str | os.PathLike) -> Source:
    """Open ``src`` (a zip file or a folder)."""
    p = Path(src).expanduser()
    if not p.exists():
        raise PreprocessError(f"--src {p} does not exist")
    if p.is_dir():
        return FolderSource(p)
    if zipfile.is_zipfile(p):
        return ZipSource(p)
    raise PreprocessError(f"--src {p} is neither a folder nor a zip archive")


def is_image_name(name: str) -> bool:
    """Whether a path has an image file extension (case-insensitive)."""
    dot = name.rfind(".")
    return dot > name.rfind("/") + 1 and name[dot:].lower() in IMAGE_EXTENSIONS
