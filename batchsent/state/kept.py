"""What a run keeps for later runs of the same model: how long it is kept, and the kept setups' files.

Kept traces (``runtime/graphs.py``) and kept setups (``model/setup.py``) live beside the file-hash memo and go
the same way: one no run has read for UNUSED_DAYS is removed when another is kept, and so is a partial file
older than PARTIAL_HOURS (a killed run's). Both may be deleted at any time; the next run builds them again.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from batchsent.data.writers import atomic_file
from batchsent.state.identity import digest_memo_path

UNUSED_DAYS = 30  # a kept trace or setup no run has read for this long is removed when another is kept
PARTIAL_HOURS = 1  # a partial file this old is a killed run's, not one being written now


def setup_folder() -> Path:
    """Where setups are kept: ``setups/``, one JSON file per key."""
    return digest_memo_path().with_name("setups")


def read_setup(key: str) -> str | None:
    """The setup kept under ``key`` (marked used), or None."""
    path = setup_folder() / f"{key}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    with contextlib.suppress(OSError):  # a read-only state folder: the setup is used all the same
        os.utime(path)
    return text


def write_setup(key: str, text: str) -> None:
    """Keep ``text`` under ``key`` (atomically), then prune; a folder that cannot take it is left as it is."""
    folder = setup_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / f"{key}.json") as temporary:
            temporary.write_text(text, encoding="utf-8")
    except OSError:
        return
    prune_setups()


def prune_setups(now: float | None = None) -> None:
    """Remove setups no run has read for UNUSED_DAYS, and partial files older than PARTIAL_HOURS."""
    now = time.time() if now is None else now
    try:
        paths = list(setup_folder().iterdir())
    except OSError:
        return
    for path in paths:
        with contextlib.suppress(OSError):  # another run pruning or writing at the same time
            age = now - path.stat().st_mtime
            partial = path.name.endswith(".partial") and age > PARTIAL_HOURS * 3600
            if partial or (path.suffix == ".json" and age > UNUSED_DAYS * 86400):
                path.unlink()


def kept_setups() -> dict[str, Any]:
    """What ``batchsent info`` says of the kept setups: where, how many and their size."""
    files = [path for path in setup_folder().glob("*.json") if path.is_file()]
    return {"folder": str(setup_folder()), "kept": len(files), "bytes": sum(path.stat().st_size for path in files)}
