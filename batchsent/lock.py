"""One writer per output: an advisory lock held for the whole run.

The lock is ``flock`` on ``.<output name>.lock`` beside the output. The operating system
drops it when the process dies, kill -9 included, so a crashed run never blocks the next
one (or its ``--resume``). The file holds the owner's pid, for the refusal message, and is
removed when the run ends.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import OutputError


def lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


class OutputLock:
    """``with OutputLock(output):`` holds the output's lock or raises OutputError naming the holder."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = lock_path(output)
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        for _ in range(3):  # the holder may remove the file between our open and our flock: open again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputError(
                    f"{self.output}: another batchsent run (pid {holder}) is writing this output; "
                    "wait for it to finish or choose another --output"
                ) from None
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self._fd = fd
                return self
            os.close(fd)
        raise OutputError(f"{self.output}: could not take the lock {self.path.name}; another run keeps replacing it")

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()  # still holding the lock: no one else can be using this file
        finally:
            os.close(self._fd)  # releases the lock
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
