"""The prediction cache: probabilities of texts already scored, kept in one SQLite file across runs.

A nightly export mostly repeats yesterday's rows; their probabilities are looked up
instead of computed again. The file holds, per model key, a 128-bit BLAKE2b digest of
each text's exact UTF-8 bytes and the float32 probabilities it got: never the text
itself, so the cache is not a second copy of the data.

Layout (``PRAGMA application_id`` marks the file as ours, ``user_version`` its schema)::

    runs(id, started, version)                       one row per run that used the cache
    models(id, key, name, description, labels, ...)  key: every input of a probability but the text
    predictions(model, digest, probabilities, truncated, windows, run, used)

WAL mode lets runs share a file: readers never block, a write is one short transaction
per chunk (``busy_timeout`` waits out the other run's), and a kill at any instant leaves
the last committed transaction, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from batchsent.errors import BatchsentError, ExitCode, first_line
from batchsent.state import sqlite_db

SCHEMA_VERSION = 1
APPLICATION_ID = 0x6273_6E74  # "bsnt"
QUERY_DIGESTS = 8192  # digests per lookup query: a few queries per chunk, far below SQLite's variable limit
BUSY_TIMEOUT_MS = 120_000  # another run's transaction is one chunk's rows; wait for it rather than fail
LAST_USE_REWRITE_SECONDS = 12 * 3600  # an entry's last use is rewritten at most this often (prune has day precision)
DIGEST_BYTES = 16
PAGE_CACHE_KIB = 32 * 1024  # SQLite's page cache: lookups hit memory more often; bounded, so RSS stays flat

_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, started REAL NOT NULL, version TEXT NOT NULL);
CREATE TABLE models (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, name TEXT NOT NULL, description TEXT NOT NULL,
    labels TEXT NOT NULL, created REAL NOT NULL, last_used REAL NOT NULL
);
CREATE TABLE predictions (
    model INTEGER NOT NULL, digest BLOB NOT NULL, probabilities BLOB NOT NULL, truncated INTEGER NOT NULL,
    windows INTEGER, run INTEGER NOT NULL, used INTEGER NOT NULL, PRIMARY KEY (model, digest)
) WITHOUT ROWID;
"""


class CacheError(BatchsentError):
    """The cache file cannot be used: not a batchsent cache, another schema version, or not writable."""

    exit_code = ExitCode.USAGE


class Entry(NamedTuple):
    """What the cache holds for one text: float32 probabilities (raw bytes), and how it was scored.

    A NamedTuple: a night with no new rows builds one per row, and a tuple is the cheapest.
    """

    digest: bytes
    probabilities: bytes
    truncated: int
    windows: int | None
    run: int
    used: int


def digest(text: str) -> bytes:
    """The cache key of a text: BLAKE2b-128 over its exact UTF-8 bytes (no normalisation of any kind)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=DIGEST_BYTES).digest()


def digest_pair(text: str, pair: str) -> bytes:
    """The cache key of a (text, text_pair) row: both exact strings, the first one's length marking the border."""
    first = text.encode("utf-8", "surrogatepass")
    hasher = hashlib.blake2b(len(first).to_bytes(8, "little"), digest_size=DIGEST_BYTES, person=b"batchsent-pair")
    hasher.update(first)
    hasher.update(pair.encode("utf-8", "surrogatepass"))
    return hasher.digest()


def model_key(description: dict[str, Any]) -> str:
    """A stable key for everything besides the text that a probability depends on."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


class ModelKey(NamedTuple):
    """A model key as a run uses it: entries are found and stored by ``key``, never by a remembered row id,
    so a key that ``prune`` removes mid-run is added again (with the run's entries) and never lent to another."""

    key: str
    name: str
    description: str  # JSON
    labels: str  # JSON


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite_db.connect(path, BUSY_TIMEOUT_MS / 1000, any_thread=True)


class PredictionCache:
    """One cache file, opened (and created when missing, with ``create``) and checked.

    The connection may be used from two threads (the job looks up in its prefetch thread
    and writes in its scoring thread); callers serialise their calls.
    """

    def __init__(self, path: Path, *, create: bool = True, named: str = "--cache") -> None:
        self.path = Path(path)
        self.named = named  # how messages name it: "--cache" for a run, "cache" for `batchsent cache`
        if self.path.is_dir():
            raise CacheError(f"{self.named} {self.path}: is a directory; expected a cache file")
        if not create and not self.path.is_file():
            raise CacheError(f"{self.path}: no such cache file")
        folder = self.path.parent
        if not folder.is_dir():
            raise CacheError(f"{self.named} {self.path}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            doing = "create the cache there" if not self.path.exists() else "keep the cache's -wal and -shm files there"
            raise CacheError(f"{self.named} {self.path}: the folder {folder} is not writable, and SQLite must {doing}")
        try:
            self.connection = _connect(self.path)
            self._check_or_create(create)
        except sqlite3.Error as error:
            raise CacheError(f"{self.named} {self.path}: {_reason(error)}") from error

    def _check_or_create(self, create: bool) -> None:
        connection = self.connection
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        foreign_version = connection.execute("PRAGMA user_version").fetchone()[0]
        if application_id == 0 and tables == 0 and foreign_version == 0 and create:  # a new (or zero-byte) file
            connection.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table: prune can free pages
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("BEGIN IMMEDIATE")
            if connection.execute("PRAGMA application_id").fetchone()[0] == 0:  # another run may have been first
                for statement in filter(str.strip, _SCHEMA.split(";")):  # executescript would commit first
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute("COMMIT")
            application_id = APPLICATION_ID
        if application_id != APPLICATION_ID:
            raise CacheError(f"{self.path}: not a batchsent cache (a SQLite database of something else)")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise CacheError(
                f"{self.path}: a batchsent cache of schema version {version}, and this batchsent reads version "
                f"{SCHEMA_VERSION}; point --cache at a new file (or delete this one)"
            )
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(
            "PRAGMA synchronous = NORMAL"
        )  # WAL: a kill never corrupts; a power cut loses at most the last commits
        connection.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")

    # --- runs --------------------------------------------------------------------------------

    def start_run(self, version: str) -> int:
        """Record a run (a write: an unwritable cache fails here, before the model loads); its id."""
        try:
            with self._transaction():
                cursor = self.connection.execute(
                    "INSERT INTO runs (started, version) VALUES (?, ?)", (time.time(), version)
                )
        except sqlite3.Error as error:
            raise CacheError(f"{self.named} {self.path}: cannot write: {_reason(error)}") from error
        return int(cursor.lastrowid or 0)

    def register(self, name: str, description: dict[str, Any], labels: Sequence[str]) -> ModelKey:
        """The model key ``description`` and ``labels`` make, added to the file (or its last use set to now)."""
        description_json = json.dumps(description, sort_keys=True, default=str)
        model = ModelKey(
            model_key({**description, "labels": list(labels)}), name, description_json, json.dumps(list(labels))
        )
        try:
            with self._transaction():
                self._model_row(model, touch=True)
        except sqlite3.Error as error:
            raise CacheError(f"{self.named} {self.path}: cannot write: {_reason(error)}") from error
        return model

    def _model_row(self, model: ModelKey, touch: bool = False) -> int:
        """The row id of ``model`` (inside a write transaction), its row added when missing.

        A new row may take the id of a row deleted earlier; entries left under that id by an older
        batchsent belong to no key, so they are dropped here rather than lent to the new one.
        """
        now = time.time()
        row = self.connection.execute("SELECT id FROM models WHERE key = ?", (model.key,)).fetchone()
        if row is not None:
            if touch:
                self.connection.execute("UPDATE models SET last_used = ? WHERE id = ?", (now, row[0]))
            return int(row[0])
        cursor = self.connection.execute(
            "INSERT INTO models (key, name, description, labels, created, last_used) VALUES (?, ?, ?, ?, ?, ?)",
            (model.key, model.name, model.description, model.labels, now, now),
        )
        model_id = int(cursor.lastrowid or 0)
        self.connection.execute("DELETE FROM predictions WHERE model = ?", (model_id,))
        return model_id

    def lookup(self, model: ModelKey, digests: Sequence[bytes]) -> dict[bytes, Entry]:
        """The entries of ``digests`` the cache holds for this model key, in a few queries (not one per text)."""
        found: dict[bytes, Entry] = {}
        for start in range(0, len(digests), QUERY_DIGESTS):
            part = digests[start : start + QUERY_DIGESTS]
            rows = self.connection.execute(
                "SELECT digest, probabilities, truncated, windows, run, used FROM predictions "
                f"WHERE model = (SELECT id FROM models WHERE key = ?) AND digest IN ({','.join('?' * len(part))})",
                (model.key, *part),
            )
            found.update((entry.digest, entry) for entry in map(Entry._make, rows))
        return found

    def store(
        self, model: ModelKey, run_id: int, new: Iterable[tuple[bytes, bytes, bool, int | None]], used: Sequence[bytes]
    ) -> None:
        """Add ``new`` entries (digest, probabilities, truncated, windows) and refresh the last use of
        ``used`` digests, in one transaction, under the model key's row (added again if a prune removed
        it meanwhile). The first value stored for a text stays."""
        now = int(time.time())
        with self._transaction():
            model_id = self._model_row(model)
            self.connection.executemany(
                "INSERT OR IGNORE INTO predictions (model, digest, probabilities, truncated, windows, run, used) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (model_id, key, values, int(truncated), windows, run_id, now)
                    for key, values, truncated, windows in new
                ),
            )
            for start in range(0, len(used), QUERY_DIGESTS):
                part = used[start : start + QUERY_DIGESTS]
                self.connection.execute(
                    f"UPDATE predictions SET used = ? WHERE model = ? AND digest IN ({','.join('?' * len(part))})",
                    (now, model_id, *part),
                )

    # --- maintenance ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Entries, models (with their entries and last use), file size and last use."""
        try:
            return self._stats()
        except sqlite3.Error as error:
            raise CacheError(f"{self.path}: cannot read: {_reason(error)}") from error

    def _stats(self) -> dict[str, Any]:
        per_model = {
            model: (count, used)
            for model, count, used in self.connection.execute(
                "SELECT model, count(*), max(used) FROM predictions GROUP BY model"
            )
        }
        models = []
        for model_id, name, description, labels, last_used in self.connection.execute(
            "SELECT id, name, description, labels, last_used FROM models ORDER BY id"
        ):
            count, _ = per_model.get(model_id, (0, None))
            models.append(
                {
                    "id": model_id,
                    "name": name,
                    "entries": count,
                    "last_used": last_used,
                    "labels": json.loads(labels),
                    "description": json.loads(description),
                }
            )
        last_run = self.connection.execute("SELECT max(started), count(*) FROM runs").fetchone()
        return {
            "path": str(self.path),
            "entries": sum(count for count, _ in per_model.values()),
            "models": models,
            "bytes": self.size_bytes(),
            "runs": last_run[1],
            "last_used": last_run[0],
        }

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def prune(self, older_than_seconds: float | None = None, model_names: Sequence[str] = ()) -> tuple[int, int]:
        """Delete entries last used longer ago than ``older_than_seconds`` and/or of the models named.

        Returns ``(entries removed, models removed)``; freed pages go back to the file system.
        """
        try:
            known = {name for (name,) in self.connection.execute("SELECT DISTINCT name FROM models")}
        except sqlite3.Error as error:
            raise CacheError(f"{self.path}: cannot read: {_reason(error)}") from error
        unknown = [name for name in model_names if name not in known]
        if unknown:
            names = ", ".join(sorted(known)) or "none"
            raise CacheError(f"{self.path}: no model {unknown[0]!r} in the cache (it holds: {names})")
        if older_than_seconds is None and not model_names:
            raise CacheError("prune needs --older-than AGE and/or --model NAME")
        entry_conditions: list[str] = []
        model_conditions = ["id NOT IN (SELECT DISTINCT model FROM predictions)"]
        parameters: list[object] = []
        if model_names:
            names = ",".join("?" * len(model_names))
            entry_conditions.append(f"model IN (SELECT id FROM models WHERE name IN ({names}))")
            model_conditions.append(f"name IN ({names})")
            parameters.extend(model_names)
        if older_than_seconds is not None:
            entry_conditions.append("used < ?")
            model_conditions.append("last_used < ?")
            parameters.append(int(time.time() - older_than_seconds))
        try:
            with self._transaction():
                removed = self.connection.execute(
                    f"DELETE FROM predictions WHERE {' AND '.join(entry_conditions)}", parameters
                ).rowcount
                dropped = self.connection.execute(
                    f"DELETE FROM models WHERE {' AND '.join(model_conditions)}", parameters
                ).rowcount
            self.connection.execute("PRAGMA incremental_vacuum")
            self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as error:
            raise CacheError(f"{self.path}: cannot prune: {_reason(error)}") from error
        return removed, dropped

    def close(self) -> None:
        self.connection.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self.connection)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (the write lock is taken up front)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if kind is None:
            self.connection.execute("COMMIT")
        elif self.connection.in_transaction:
            self.connection.execute("ROLLBACK")


def _reason(error: BaseException) -> str:
    text = first_line(error)
    if "file is not a database" in text:
        return "not a batchsent cache (the file is not a SQLite database)"
    if "unable to open database file" in text:
        return "cannot open the file or create its -wal and -shm files beside it (check the folder's permissions)"
    if "malformed" in text:
        return f"the cache file is damaged ({text}); move it aside and start a new cache"
    return text


MAX_AGE_SECONDS = 100 * 365 * 86400  # longer than any cache has lived; larger values only overflow


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w`` or ``45s`` in seconds (ASCII digits, at most 100 years)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    number, unit = text[:-1], text[-1:].lower()
    if unit not in units or not re.fullmatch(r"[0-9]+", number):
        raise CacheError(f"--older-than {text!r}: expected a number and a unit, like 30d, 12h, 90m or 2w")
    if len(number) > 12 or int(number) * units[unit] > MAX_AGE_SECONDS:
        raise CacheError(f"--older-than {text!r}: longer than 100 years; give a shorter age, like 30d")
    return int(number) * units[unit]
