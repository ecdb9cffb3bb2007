"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """Write ``path`` through a temporary file in the same directory, renamed over ``path`` at the end.

    Args:
        path: the file to (re)place; its directory must exist.
        write: called with the temporary file's path (not yet created); it writes the whole content.
        suffix: ending of the temporary name, for writers that go by the extension (e.g. ".tmp.npz").
    Returns:
        ``path`` as a Path. On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
