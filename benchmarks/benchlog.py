"""Keep a benchmark's raw output: everything it prints goes to the terminal and a file."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO


class Tee:
    """A stdout that writes to several streams (the raw output committed beside the table)."""

    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, text: str) -> int:
        for st in self.streams:
            st.write(text)
            st.flush()
        return len(text)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def tee_stdout(path: str | Path | None) -> None:
    """From now on, also write stdout to ``path`` (nothing when None)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        sys.stdout = Tee(sys.stdout, open(path, "w"))
