"""The shared prediction cache of ``--engine ray``: a folder or object prefix that workers on every node read.

It holds what the SQLite cache (``batchsent.cache.store``) holds, keyed the same way: per model key
(everything besides the text that moves a probability), the BLAKE2b-128 digest of each text
and its float32 probabilities, never the text. Ray workers look up each block's digests in it
and score only the misses; the driver adds the run's new entries while it merges the run's
parts. ``batchsent cache export`` copies a SQLite cache into one (the keys are the same).

Layout under the location::

    batchsent-cache.json                      marks the location as a cache: format and version
    models/<key>.json                         name, description and labels of one model key
    entries/<key>/<bucket>/<segment>.parquet  digest, probabilities, truncated, windows, used
    runs/<id>.json                            one per run that used the cache: started, version

A bucket is the digest's first byte (256 per key): a lookup reads only the buckets its
digests fall in, and a worker keeps the buckets it read in memory (bounded) for the next
blocks. Segments are never modified, and each is named by the hash of its model key and
digests: a retried or resumed merge writes the same names with the same rows, and two runs
never write into one file. A text in two segments (two runs scored it at once) is one entry,
the most recently used. ``prune`` rewrites a bucket into one segment before it deletes the
segments it read, so a segment a run adds meanwhile stays. Every file appears whole (a
rename, or one PUT), so a killed run leaves the cache as its last complete file left it.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchsent.cache.store import DIGEST_BYTES, CacheError, ModelKey, PredictionCache, model_key
from batchsent.data.storage import filesystem_of, is_url, redact, write_bytes_atomically, write_parquet_atomically
from batchsent.errors import first_line

FORMAT = "batchsent-shared-cache"
FORMAT_VERSION = 1
MARKER = "batchsent-cache.json"
HIT_REFRESH_SECONDS = 7 * 86400  # a hit last used longer ago is written again with the run's time (prune sees the use)
FLUSH_ROWS = 500_000  # new entries the merge holds before it writes them: its memory stays bounded
LOADED_ENTRIES = 4_000_000  # entries a worker keeps in memory across blocks (the least recently used bucket goes)
LEFTOVER_SECONDS = 86400  # a temporary file older than this was left by a killed writer; prune deletes it
READ_ATTEMPTS = 3  # a segment a prune replaced between listing and reading: list again


def is_shared_location(location: str | Path) -> bool:
    """True for an object prefix or a local folder: what ``--engine ray`` and ``cache stats|prune`` take as shared."""
    return is_url(str(location)) or Path(location).expanduser().is_dir()


def entry_schema(width: int) -> pa.Schema:
    return pa.schema(
        [
            ("digest", pa.binary(DIGEST_BYTES)),
            ("probabilities", pa.binary(4 * width)),
            ("truncated", pa.bool_()),
            ("windows", pa.int32()),
            ("used", pa.int64()),
        ]
    )


def entries_table(
    digests: Sequence[bytes],
    probabilities: np.ndarray | Sequence[bytes],
    truncated: Sequence[bool],
    windows: Sequence[int | None],
    used: int | Sequence[int],
    width: int,
) -> pa.Table:
    """Entries as the segments store them; ``probabilities`` rows of float32 (or their raw bytes)."""
    if isinstance(probabilities, np.ndarray):
        probabilities = [row.tobytes() for row in np.ascontiguousarray(probabilities, dtype=np.float32)]
    used = [used] * len(digests) if isinstance(used, int) else list(used)
    return pa.table(
        [
            pa.array(list(digests), pa.binary(DIGEST_BYTES)),
            pa.array(list(probabilities), pa.binary(4 * width)),
            pa.array(list(truncated), pa.bool_()),
            pa.array(list(windows), pa.int32()),
            pa.array(used, pa.int64()),
        ],
        schema=entry_schema(width),
    )


@dataclass
class Found:
    """What a lookup found for a block's rows; rows not found (or blank) hold zeros."""

    hit: np.ndarray  # bool per row
    probabilities: np.ndarray  # float32, rows x labels
    truncated: np.ndarray  # bool
    windows: np.ndarray  # int64
    stale: np.ndarray  # hits last used before the refresh limit: the run writes them again


@dataclass
class _Bucket:
    """One bucket of one model key in memory: its entries sorted by digest, each digest once."""

    digests: np.ndarray  # S16
    probabilities: np.ndarray
    truncated: np.ndarray
    windows: np.ndarray
    used: np.ndarray


def _digest_array(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not len(array):
        return np.empty(0, dtype=f"S{DIGEST_BYTES}")
    return np.frombuffer(
        array.buffers()[1], dtype=f"S{DIGEST_BYTES}", count=len(array), offset=array.offset * DIGEST_BYTES
    )


def _newest_first(table: pa.Table) -> pa.Table:
    """Each digest once: the entry used most recently."""
    if not table.num_rows:
        return table
    table = table.sort_by([("digest", "ascending"), ("used", "descending")])
    digests = _digest_array(table.column("digest"))
    first = np.ones(len(digests), dtype=bool)
    first[1:] = digests[1:] != digests[:-1]
    return table.filter(pa.array(first))


class SharedCache:
    """A shared cache location, opened (and created when missing or empty, with ``create``) and checked."""

    def __init__(self, location: str | Path, *, create: bool = True, named: str = "--cache") -> None:
        self.named = named  # how messages name it: "--cache" for a run, "cache" for `batchsent cache`
        # A local folder by its absolute path: Ray's worker processes do not share the driver's working folder.
        self.location = (
            str(location).rstrip("/") if is_url(str(location)) else str(Path(location).expanduser().resolve())
        )
        self.shown = redact(self.location)
        try:
            self.filesystem, self.root = filesystem_of(self.location)
        except Exception as error:
            raise CacheError(f"{self.named} {self.shown}: {first_line(error)}") from None
        self._loaded: OrderedDict[tuple[str, int], _Bucket] = OrderedDict()
        self.run: str | None = None  # set by start_run
        self._loaded_entries = 0
        try:
            self._check_or_create(create)
        except OSError as error:
            raise CacheError(f"{self.named} {self.shown}: {first_line(error)}") from None

    def _check_or_create(self, create: bool) -> None:
        from pyarrow import fs

        found = self.filesystem.get_file_info(self.root).type
        if found == fs.FileType.File:
            raise CacheError(
                f"{self.named} {self.shown}: a file, and a Ray run's cache is a folder or an object prefix (a "
                "SQLite cache is the local engine's; `batchsent cache export` copies one into a folder)"
            )
        marker = self._read_json(MARKER)
        if marker is None:
            empty = found == fs.FileType.NotFound or not self.filesystem.get_file_info(fs.FileSelector(self.root))
            if not empty:
                raise CacheError(
                    f"{self.named} {self.shown}: not a batchsent cache (it holds other files and no {MARKER})"
                )
            if not create:
                raise CacheError(
                    f"{self.shown}: no such cache (neither a SQLite cache file nor a folder or prefix "
                    "that a Ray run's --cache made)"
                )
            if not is_url(self.location) and not Path(self.location).parent.is_dir():
                raise CacheError(f"{self.named} {self.shown}: the folder {Path(self.location).parent} does not exist")
            self._write_json(MARKER, {"format": FORMAT, "version": FORMAT_VERSION, "buckets": 256})
            return
        if marker.get("format") != FORMAT:
            raise CacheError(
                f"{self.named} {self.shown}: not a batchsent cache ({MARKER} says {marker.get('format')!r})"
            )
        if marker.get("version") != FORMAT_VERSION:
            raise CacheError(
                f"{self.named} {self.shown}: a shared cache of version {marker.get('version')}, and this "
                f"batchsent reads version {FORMAT_VERSION}; point --cache at a new location"
            )

    # --- small files -------------------------------------------------------------------------

    def _read_json(self, relative: str) -> dict[str, Any] | None:
        try:
            with self.filesystem.open_input_stream(f"{self.root}/{relative}") as stream:
                return json.loads(stream.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise CacheError(f"{self.shown}/{relative}: damaged ({first_line(error)})") from None

    def _write_json(self, relative: str, value: dict[str, Any]) -> None:

        folder, _, name = f"{self.root}/{relative}".rpartition("/")
        write_bytes_atomically(self.filesystem, folder, name, json.dumps(value, sort_keys=True).encode("utf-8"))

    def _listing(self, relative: str, recursive: bool = False) -> list[Any]:
        from pyarrow import fs

        selector = fs.FileSelector(f"{self.root}/{relative}".rstrip("/"), recursive=recursive, allow_not_found=True)
        return self.filesystem.get_file_info(selector)

    # --- runs and models ---------------------------------------------------------------------

    def start_run(self, version: str) -> str:
        """Record a run (a write: a cache that cannot be written fails here, before the cluster does any work)."""
        run = uuid.uuid4().hex
        try:
            self._write_json(f"runs/{run}.json", {"started": time.time(), "version": version})
        except OSError as error:
            raise CacheError(f"{self.named} {self.shown}: cannot write: {first_line(error)}") from None
        self.run = run
        return run

    def register(self, name: str, description: dict[str, Any], labels: Sequence[str]) -> ModelKey:
        """The model key of ``description`` and ``labels`` (as the SQLite cache makes it), recorded as used now."""
        model = ModelKey(
            model_key({**description, "labels": list(labels)}),
            name,
            json.dumps(description, sort_keys=True, default=str),
            json.dumps(list(labels)),
        )
        self.write_model(model, time.time())
        return model

    def write_model(self, model: ModelKey, last_used: float) -> None:
        self._write_json(
            f"models/{model.key}.json",
            {
                "key": model.key,
                "name": model.name,
                "last_used": last_used,
                "description": json.loads(model.description),
                "labels": json.loads(model.labels),
            },
        )

    def models(self) -> list[dict[str, Any]]:
        found = []
        for info in self._listing("models"):
            if info.base_name.endswith(".json") and not info.base_name.startswith("."):
                model = self._read_json(f"models/{info.base_name}")
                if model is not None:
                    found.append(model)
        return sorted(found, key=lambda model: (model["name"], model["key"]))

    # --- lookups ---------------------------------------------------------------------------------

    def lookup(self, model: ModelKey, digests: Sequence[bytes | None], width: int, now: float | None = None) -> Found:
        """The entries of ``digests`` (None: a blank row) this cache holds for ``model``; every bucket read is kept
        in memory (up to ``LOADED_ENTRIES`` entries) for the next blocks."""
        size = len(digests)
        found = Found(
            np.zeros(size, dtype=bool),
            np.zeros((size, width), dtype=np.float32),
            np.zeros(size, dtype=bool),
            np.zeros(size, dtype=np.int64),
            np.zeros(size, dtype=bool),
        )
        rows = np.fromiter((digest is not None for digest in digests), dtype=bool, count=size)
        if not rows.any():
            return found
        rows = np.flatnonzero(rows)
        keys = np.array([digests[int(row)] for row in rows], dtype=f"S{DIGEST_BYTES}")
        buckets = np.frombuffer(keys.tobytes(), dtype=np.uint8)[::DIGEST_BYTES]
        limit = (time.time() if now is None else now) - HIT_REFRESH_SECONDS
        for bucket in np.unique(buckets):
            entries = self._bucket(model.key, int(bucket), width)
            if not len(entries.digests):
                continue
            wanted = rows[buckets == bucket]
            asked = keys[buckets == bucket]
            positions = np.minimum(np.searchsorted(entries.digests, asked), len(entries.digests) - 1)
            match = entries.digests[positions] == asked
            hits, at = wanted[match], positions[match]
            found.hit[hits] = True
            found.probabilities[hits] = entries.probabilities[at]
            found.truncated[hits] = entries.truncated[at]
            found.windows[hits] = entries.windows[at]
            found.stale[hits] = entries.used[at] < limit
        return found

    def _bucket(self, key: str, bucket: int, width: int) -> _Bucket:
        loaded = self._loaded.get((key, bucket))
        if loaded is not None:
            self._loaded.move_to_end((key, bucket))
            return loaded
        table = self._read_bucket(key, bucket, width)
        probabilities = np.frombuffer(
            table.column("probabilities").combine_chunks().buffers()[1] or b"", dtype=np.float32
        )
        loaded = _Bucket(
            _digest_array(table.column("digest")).copy(),
            probabilities[: table.num_rows * width].reshape(table.num_rows, width).copy(),
            table.column("truncated").to_numpy(zero_copy_only=False).astype(bool),
            table.column("windows").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64),
            table.column("used").to_numpy(zero_copy_only=False),
        )
        self._loaded[(key, bucket)] = loaded
        self._loaded_entries += len(loaded.digests)
        while self._loaded_entries > LOADED_ENTRIES and len(self._loaded) > 1:
            _, dropped = self._loaded.popitem(last=False)
            self._loaded_entries -= len(dropped.digests)
        return loaded

    def _segments(self, key: str, bucket: int) -> list[Any]:
        from pyarrow import fs

        return sorted(
            (
                info
                for info in self._listing(f"entries/{key}/{bucket:02x}")
                if info.type == fs.FileType.File
                and info.base_name.endswith(".parquet")
                and not info.base_name.startswith(".")
            ),
            key=lambda info: info.base_name,
        )

    def _read_bucket(
        self, key: str, bucket: int, width: int, segments: list[Any] | None = None, damaged: list[Any] | None = None
    ) -> pa.Table:
        """Every entry of one bucket, each digest once; a segment deleted by a prune meanwhile: list again. A
        segment that cannot be read is a CacheError naming it, or, given ``damaged``, skipped and listed there."""
        for attempt in range(READ_ATTEMPTS):
            listed = self._segments(key, bucket) if segments is None or attempt else segments
            try:
                tables = [table for info in listed if (table := self._read_segment(info, damaged)) is not None]
            except FileNotFoundError:
                if attempt == READ_ATTEMPTS - 1:
                    raise
                continue
            schema = entry_schema(width)
            tables = [table.select(schema.names).cast(schema) for table in tables]
            return _newest_first(pa.concat_tables(tables) if tables else schema.empty_table())
        raise AssertionError("unreachable")

    def _read_segment(self, info: Any, damaged: list[Any] | None) -> pa.Table | None:
        try:
            return pq.read_table(info.path, filesystem=self.filesystem)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as error:
            if damaged is None:
                relative = info.path[len(self.root) + 1 :]
                raise CacheError(
                    f"{self.named} {self.shown}: the segment {relative} is damaged ({first_line(error)}); "
                    f"batchsent cache prune {self.shown} --older-than 3650d drops damaged segments and "
                    "keeps the rest"
                ) from None
            damaged.append(info)
            return None

    # --- additions -------------------------------------------------------------------------------

    def add(self, key: str, entries: pa.Table) -> int:
        """Write ``entries`` (``entries_table``) of one model key, one segment per bucket, named by their digests;
        how many distinct texts they hold."""
        if not entries.num_rows:
            return 0
        entries = _newest_first(entries)
        buckets = np.frombuffer(_digest_array(entries.column("digest")).tobytes(), dtype=np.uint8)[::DIGEST_BYTES]
        for bucket in np.unique(buckets):
            self._write_segment(key, int(bucket), entries.filter(pa.array(buckets == bucket)))
        return entries.num_rows

    def _write_segment(self, key: str, bucket: int, entries: pa.Table) -> str:
        digests = _digest_array(entries.column("digest"))
        name = hashlib.blake2b(key.encode() + digests.tobytes(), digest_size=16).hexdigest() + ".parquet"
        write_parquet_atomically(self.filesystem, f"{self.root}/entries/{key}/{bucket:02x}", name, entries)
        return name

    # --- maintenance -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Entries, models (with their entries and last use), bytes, runs and last use: the SQLite cache's shape."""
        try:
            return self._stats()
        except OSError as error:
            raise CacheError(f"{self.shown}: cannot read: {first_line(error)}") from None

    def _stats(self) -> dict[str, Any]:
        from pyarrow import fs

        listing = [info for info in self._listing("", recursive=True) if info.type == fs.FileType.File]
        runs = [info for info in listing if "/runs/" in info.path and info.base_name.endswith(".json")]
        started = [self._read_json(f"runs/{info.base_name}") or {} for info in runs]
        models = []
        for model in self.models():
            width = len(model["labels"])
            count = 0
            for bucket in range(256):
                segments = self._segments(model["key"], bucket)
                if segments:
                    count += self._read_bucket(model["key"], bucket, width, segments).num_rows
            models.append(
                {
                    "id": model["key"][:12],
                    "name": model["name"],
                    "entries": count,
                    "last_used": model.get("last_used"),
                    "labels": model["labels"],
                    "description": model["description"],
                }
            )
        return {
            "path": self.shown,
            "entries": sum(model["entries"] for model in models),
            "models": models,
            "bytes": sum(info.size or 0 for info in listing),
            "runs": len(runs),
            "last_used": max((run.get("started", 0) for run in started), default=None),
        }

    def size_bytes(self) -> int:
        from pyarrow import fs

        return sum(info.size or 0 for info in self._listing("", recursive=True) if info.type == fs.FileType.File)

    def prune(self, older_than_seconds: float | None = None, model_names: Sequence[str] = ()) -> tuple[int, int]:
        """Delete entries last used longer ago than ``older_than_seconds`` and/or of the models named, as the SQLite
        cache does; returns ``(entries removed, models removed)``. A bucket is rewritten as one segment first, and
        only the segments read are deleted: entries a concurrent run adds stay."""
        try:
            return self._prune(older_than_seconds, model_names)
        except OSError as error:
            raise CacheError(f"{self.shown}: cannot prune: {first_line(error)}") from None

    def _prune(self, older_than_seconds: float | None, model_names: Sequence[str]) -> tuple[int, int]:
        models = self.models()
        known = {model["name"] for model in models}
        unknown = [name for name in model_names if name not in known]
        if unknown:
            raise CacheError(
                f"{self.shown}: no model {unknown[0]!r} in the cache (it holds: {', '.join(sorted(known)) or 'none'})"
            )
        if older_than_seconds is None and not model_names:
            raise CacheError("prune needs --older-than AGE and/or --model NAME")
        cutoff = None if older_than_seconds is None else time.time() - older_than_seconds
        removed = dropped = 0
        for model in models:
            if model_names and model["name"] not in model_names:
                continue
            key, width, remaining = model["key"], len(model["labels"]), 0
            for bucket in range(256):
                segments = self._segments(key, bucket)
                if not segments:
                    continue
                damaged: list[Any] = []
                table = self._read_bucket(key, bucket, width, segments, damaged)
                kept = (
                    table.slice(0, 0)
                    if cutoff is None
                    else table.filter(pc.greater_equal(table.column("used"), int(cutoff)))
                )
                removed += table.num_rows - kept.num_rows
                remaining += kept.num_rows
                if kept.num_rows == table.num_rows and len(segments) == 1 and not damaged:
                    continue
                written = self._write_segment(key, bucket, kept) if kept.num_rows else None
                for info in segments:
                    if info.base_name != written:
                        self.filesystem.delete_file(info.path)
            if not remaining and (cutoff is None or (model.get("last_used") or 0) < cutoff):
                self.filesystem.delete_file(f"{self.root}/models/{key}.json")
                dropped += 1
        self._delete_leftovers()
        self._loaded.clear()
        return removed, dropped

    def close(self) -> None:
        """Nothing is held open between calls (the SQLite cache's counterpart closes its connection)."""
        self._loaded.clear()

    def _delete_leftovers(self) -> None:
        """Temporary files of writers killed more than a day ago (local folders only: a PUT leaves none)."""
        from pyarrow import fs

        limit = time.time() - LEFTOVER_SECONDS
        for info in self._listing("", recursive=True):
            if (
                info.type == fs.FileType.File
                and info.base_name.endswith(".partial")
                and info.mtime is not None
                and info.mtime.timestamp() < limit
            ):
                self.filesystem.delete_file(info.path)


class EntryWriter:
    """The run's new entries as the driver merges its parts, written to the cache every ``FLUSH_ROWS`` rows."""

    def __init__(self, cache: SharedCache, used: int) -> None:
        self.cache, self.used = cache, used
        self._pending: dict[tuple[str, int], list[pa.Table]] = {}
        self._rows = 0
        self.written = 0

    def add(
        self,
        key: str,
        width: int,
        digests: pa.Array,
        probabilities: pa.Array,
        truncated: pa.Array,
        windows: pa.Array | None,
    ) -> None:
        if not len(digests):
            return
        table = pa.table(
            [
                digests.cast(pa.binary(DIGEST_BYTES)),
                probabilities.cast(pa.binary(4 * width)),
                truncated.cast(pa.bool_()),
                windows.cast(pa.int32()) if windows is not None else pa.nulls(len(digests), pa.int32()),
                pa.array(np.full(len(digests), self.used, dtype=np.int64)),
            ],
            schema=entry_schema(width),
        )
        self._pending.setdefault((key, width), []).append(table)
        self._rows += table.num_rows
        if self._rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        for (key, _), tables in self._pending.items():
            self.written += self.cache.add(key, pa.concat_tables(tables))
        self._pending.clear()
        self._rows = 0


def export_sqlite(source: PredictionCache, target: SharedCache, batch_rows: int = FLUSH_ROWS) -> tuple[int, int]:
    """Copy every model key and entry of a SQLite cache into a shared cache (same keys); (entries, models) copied."""
    entries = 0
    models = source.connection.execute("SELECT id, key, name, description, labels, last_used FROM models").fetchall()
    for model_id, key, name, description, labels, last_used in models:
        target.write_model(ModelKey(key, name, description, labels), last_used)
        width = len(json.loads(labels))
        cursor = source.connection.execute(
            "SELECT digest, probabilities, truncated, windows, used FROM predictions WHERE model = ?", (model_id,)
        )
        while rows := cursor.fetchmany(batch_rows):
            digests, values, truncated, windows, used = zip(*rows)
            target.add(key, entries_table(digests, values, [bool(flag) for flag in truncated], windows, used, width))
            entries += len(rows)
    return entries, len(models)
