"""Fingerprints of what a result depends on: the input file and the model.

Used to refuse resuming a run whose input or model changed, to key ONNX exports, and to
record a run in its manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from batchsent.data.storage import fingerprint, is_url, remote
from batchsent.state import sqlite_db


def package_version(package: str) -> str | None:
    """An installed package's version (None when absent), as the manifest and the cache key record it."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def input_fingerprint(path: Path | str) -> dict[str, Any]:
    """A local file's size, mtime and SHA-256 of its whole content (remembered, see ``file_sha256``), so an edit
    that keeps the size and mtime (``cp -p``, ``rsync -t``) is still a change.

    An object on object storage: its URL, size and modification time.
    """
    if is_url(path):
        return fingerprint(remote(str(path)))
    assert isinstance(path, Path)
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": file_sha256(path),
    }


def model_identity(model_ref: str, config: Any, commit: str | None = None) -> dict[str, Any]:
    """What the model's results depend on: a local folder's files by content, or a Hub id, the commit of the
    snapshot loaded (``commit``, see ``hub_commit``) and its config (``config``: the loaded config; no weights needed).

    A local folder is keyed by the SHA-256 of its weight, config and tokenizer files, so weights
    replaced with a file of the same size and mtime (``cp -p``, ``rsync -t``, a restore) give
    another key; each file is hashed once per content (see ``file_sha256``).
    """
    path = Path(model_ref).expanduser()
    if path.is_dir():
        return {"path": str(path.resolve()), "files": folder_digests(path)}
    config_json = config.to_json_string(use_diff=False)
    return {"config_sha256": hashlib.sha256(config_json.encode()).hexdigest(), "hub_id": model_ref, "revision": commit}


def hub_snapshot(model_ref: str, revision: str | None) -> Path | None:
    """The local Hub cache's snapshot folder of ``model_ref`` at ``revision`` (a branch, tag or commit; None: main),
    found without the network; None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_ref, "config.json", revision=revision or "main")
    except Exception:
        return None
    return Path(found).parent if isinstance(found, str) else None


def hub_commit(model_ref: str, revision: str | None) -> str | None:
    """The commit ``revision`` of a cached Hub model points at now (the snapshot folder's name); None when not cached.
    A run loads every file from this commit, so a branch that moves during a run, or between a run and its
    --resume, cannot mix two versions of the model."""
    snapshot = hub_snapshot(model_ref, revision)
    return snapshot.name if snapshot is not None and snapshot.parent.name == "snapshots" else None


MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")  # weights, config, tokenizer, vocabularies


def folder_digests(folder: Path) -> dict[str, str]:
    """``{file name: SHA-256}`` of the files of a model folder that its results depend on."""
    return {
        entry.name: file_sha256(entry)
        for entry in sorted(folder.iterdir())
        if entry.suffix in MODEL_FILE_SUFFIXES and entry.is_file()
    }


def digest_memo_path() -> Path:
    """Where file hashes are remembered: ``$BATCHSENT_STATE_DIR`` or the user's cache folder."""
    root = os.environ.get("BATCHSENT_STATE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "batchsent"
    return Path(root).expanduser() / "file-digests.sqlite"


HASH_BLOCK_BYTES = 8 << 20


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content, remembered against its (device, inode, size, mtime_ns, ctime_ns).

    Any write to a file, or a copy over it, changes its ctime (which no tool sets back), so a
    remembered hash is reused only for the very same bytes, and a night does not rehash
    gigabytes. Where the memo cannot be read or written, the file is hashed every time.
    """
    stat = path.stat()
    identity = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    with _digest_memo() as memo:
        try:
            row = (
                memo
                and memo.execute(
                    "SELECT sha256 FROM digests WHERE path = ? AND device = ? AND inode = ? AND "
                    "size = ? AND mtime_ns = ? AND ctime_ns = ?",
                    identity,
                ).fetchone()
            )
        except sqlite3.Error:
            row = None
        if row:
            return str(row[0])
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            while block := stream.read(HASH_BLOCK_BYTES):
                digest.update(block)
        with contextlib.suppress(sqlite3.Error):
            memo and memo.execute(
                "INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?)", (*identity, digest.hexdigest())
            )
        return digest.hexdigest()


@contextlib.contextmanager
def _digest_memo() -> Iterator[sqlite3.Connection | None]:
    """The memo of file hashes (one SQLite table shared by this user's runs), or None where it cannot be opened."""
    path = digest_memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite_db.connect(path, wal=True)
    except (OSError, sqlite3.Error):
        yield None
        return
    try:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, device INTEGER, inode INTEGER, "
            "size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT NOT NULL)"
        )
    except sqlite3.Error:
        connection.close()
        yield None
        return
    try:
        yield connection
    finally:
        connection.close()
