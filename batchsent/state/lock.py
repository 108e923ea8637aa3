"""One writer per output: a lock held for the whole run, on a local path or an object-storage prefix.

A local output's lock is ``flock`` on ``.<output name>.lock`` beside the output. The
operating system drops it when the process dies, kill -9 included, so a crashed run never
blocks the next one (or its ``--resume``). The file holds the owner's pid, for the refusal
message, and is removed when the run ends.

An object-storage output has no flock: its lock is a lease, ``.<output name>.batchsent-lease.json``
beside it, naming its holder (host, pid, a random token) and when it was last renewed. A run
writes it, waits SETTLE_SECONDS and reads it back: of two runs that raced, only the last writer
finds its own token. The holder renews it every RENEW_SECONDS and checks it still holds it
before it publishes; another run takes it over only once it went LEASE_SECONDS without renewal,
or at once when its holder ran on the same host and is gone (kill -9, then --resume).
``output_lock`` gives the right one for an output.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

from batchsent.data.storage import failure_reason, is_url, redact, remote
from batchsent.errors import OutputError, first_line


@contextlib.contextmanager
def waiting_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the flock of ``path`` (created when missing), waiting for another process that holds it: for
    work a second run should wait for rather than refuse (a tuning; ``OutputLock`` refuses instead).
    ``on_wait`` is called once, before waiting, where another process holds it: a run never waits unsaid."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


class OutputLock:
    """``with OutputLock(output):`` holds the output's lock or raises OutputError naming the holder."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = lock_path(output)
        self._fd: int | None = None

    def check(self) -> None:
        """Still held (a flock is, until the process ends): nothing to check."""

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


LEASE_SECONDS = 120.0  # a lease not renewed for this long belongs to a run that died (or lost its network)
RENEW_SECONDS = 20.0
SETTLE_SECONDS = 2.0  # longer than writing a small object takes: a racing writer's lease is visible by then


def lease_url(output: str) -> str:
    parent, _, name = output.rstrip("/").rpartition("/")
    return f"{parent}/.{name}.batchsent-lease.json"


class ObjectLease:
    """``with ObjectLease(url):`` holds the lease of an object-storage output or raises OutputError naming its holder;
    ``check()`` raises if it was lost (not renewed in time, taken over) before the run publishes."""

    def __init__(self, output: str) -> None:
        self.output = output.rstrip("/")
        self.url = lease_url(self.output)
        self.shown = redact(self.url)
        self.location = remote(self.url, OutputError)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lost: str | None = None

    def __enter__(self) -> Self:
        held = self._read()
        if held is not None and not _expired(held):
            raise OutputError(
                f"{redact(self.output)}: another batchsent run ({held.get('host')}, pid "
                f"{held.get('pid')}) is writing this output: it holds {self.shown}, renewed "
                f"{max(time.time() - float(held.get('renewed_at', 0)), 0):.0f} s ago; wait for it to "
                f"finish (a lease of a run that died expires {LEASE_SECONDS:.0f} s after its last renewal)"
            )
        self._write()
        time.sleep(SETTLE_SECONDS)
        held = self._read()
        if held is None or held.get("token") != self.token:
            raise OutputError(
                f"{self.shown}: another batchsent run took this output's lease at the same moment; "
                "wait for it to finish"
            )
        self._renewer = threading.Thread(target=self._renew, name="batchsent-lease", daemon=True)
        self._renewer.start()
        return self

    def check(self) -> None:
        """Raise OutputError if the lease was lost: publishing now could replace another run's output."""
        if self._lost is not None:
            raise OutputError(f"{self.shown}: {self._lost}; nothing was published, run again (with --resume)")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        with contextlib.suppress(Exception):
            held = self._read()
            if held is not None and held.get("token") == self.token:
                self.location.fs.delete_file(self.location.path)

    def _renew(self) -> None:
        last = time.time()
        while not self._stop.wait(RENEW_SECONDS):
            try:
                held = self._read()
                if held is None or held.get("token") != self.token:
                    self._lost = "this run's lease was taken over by another run"
                    return
                self._write()
                last = time.time()
            except Exception as error:
                if time.time() - last > LEASE_SECONDS:
                    self._lost = f"the lease could not be renewed for {LEASE_SECONDS:.0f} s ({first_line(error)})"
                    return

    def _read(self) -> dict[str, Any] | None:
        from pyarrow import fs

        if self.location.info(OutputError).type == fs.FileType.NotFound:
            return None
        try:
            with self.location.fs.open_input_stream(self.location.path) as stream:
                held = json.loads(stream.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise OutputError(f"{self.shown}: cannot read this output's lease ({failure_reason(error)})") from None
        return held if isinstance(held, dict) else {}

    def _write(self) -> None:
        lease = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "renewed_at": time.time()}
        try:
            with self.location.fs.open_output_stream(self.location.path) as stream:
                stream.write(json.dumps(lease).encode())
        except OSError as error:
            raise OutputError(f"{self.shown}: cannot write this output's lease ({failure_reason(error)})") from None


def _expired(held: dict[str, Any]) -> bool:
    """A lease nobody renewed for LEASE_SECONDS, or one whose holder ran here and is gone."""
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
    try:
        return time.time() - float(held.get("renewed_at", 0)) > LEASE_SECONDS
    except (TypeError, ValueError):
        return True  # not a lease this version wrote


def output_lock(output: Path | str) -> OutputLock | ObjectLease:
    """The one-writer lock of an output: a flock beside a local path, a lease beside an object-storage prefix."""
    return ObjectLease(str(output)) if is_url(output) else OutputLock(Path(output))
