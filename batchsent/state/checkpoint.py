"""Durable progress: each scored chunk is committed beside the output, so a killed run resumes.

Layout, next to the output file::

    .<output name>.batchsent/
        state.json           what is committed, and the fingerprint it was computed from
        part-00000001.arrow  the output rows of chunk 1 (Arrow IPC), and so on

Every file is written under a temporary name, fsync'd and renamed, and state.json is
renamed last, so after a kill at any instant (kill -9 included) state.json names only
parts that are complete. The final output is assembled from the parts, so a resumed run
writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from batchsent.data.writers import atomic_file
from batchsent.errors import BatchsentError, first_line

STATE_VERSION = 3


class ResumeMismatch(BatchsentError):
    """--resume found progress computed from a different input, model or option."""

    exit_code = 2


class DamagedProgress(ResumeMismatch):
    """The progress folder cannot be read back (a truncated state.json, a part that is not an Arrow file)."""


def damaged(directory: Path, what: str) -> DamagedProgress:
    return DamagedProgress(
        f"{directory}: the interrupted run's progress is damaged ({what}); pass --overwrite to start over"
    )


@dataclass
class CommittedState:
    """What the committed parts hold."""

    fingerprint: dict[str, Any]
    chunks: int = 0
    rows: int = 0
    empty: int = 0
    truncated: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    cached: int = 0  # rows whose probabilities came from the --cache
    duplicates: int = 0  # rows that repeated a text this run had scored
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # a multi-model run: these counts per model


def first_difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str | None:
    """Dotted name of the first entry that differs between two fingerprints (None: equal).

    Entries are compared in the order the fingerprint lists them (size before mtime).
    """
    for key in [*old, *(k for k in new if k not in old)]:
        name = f"{prefix}{key}"
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            inner = first_difference(before, after, f"{name}.")
            if inner:
                return inner
        elif before != after:
            return f"{name} ({before!r} -> {after!r})" if not isinstance(before, (dict, list)) else name
    return None


def no_model_counts() -> dict[str, Any]:
    """One model's counts in a multi-model run's state before it scored a row."""
    return {"truncated": 0, "label_counts": {}, "cached": 0, "duplicates": 0}


def _add_labels(total: dict[str, int], added: dict[str, int]) -> None:
    for label, count in added.items():
        total[label] = total.get(label, 0) + count


class Checkpoint:
    """The progress folder of one output path."""

    def __init__(self, output: Path) -> None:
        self.directory = output.parent / f".{output.name}.batchsent"
        self.state_path = self.directory / "state.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def load(self) -> CommittedState:
        """The committed state, every part it names checked to open as Arrow (a DamagedProgress if not)."""
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise damaged(self.directory, f"{self.state_path.name}: {first_line(error)}") from None
        if not isinstance(raw, dict) or raw.pop("version", None) != STATE_VERSION:
            raise ResumeMismatch(f"{self.directory}: progress from another batchsent version; pass --overwrite")
        try:
            state = CommittedState(**raw)
        except TypeError:
            raise damaged(self.directory, f"{self.state_path.name} lacks fields it should have") from None
        for index in range(1, state.chunks + 1):
            part = self._part(index)
            try:
                with pa.memory_map(str(part)) as source:
                    pa.ipc.open_file(source)
            except (OSError, pa.ArrowException) as error:
                raise damaged(self.directory, f"{part.name}: {first_line(error)}") from None
        return state

    def start(self, fingerprint: dict[str, Any]) -> CommittedState:
        """A fresh, empty progress folder (any older one is removed)."""
        self.remove()
        self.directory.mkdir(parents=True)
        state = CommittedState(fingerprint)
        self._write_state(state)
        return state

    def commit(self, state: CommittedState, batch: pa.RecordBatch, counts: CommittedState) -> None:
        """Make one more chunk durable: its part file first, then the state naming it."""
        with (
            atomic_file(self._part(state.chunks + 1)) as temporary,
            pa.ipc.new_file(str(temporary), batch.schema) as out,
        ):
            out.write_batch(batch)
        state.chunks += 1
        state.rows += counts.rows
        state.empty += counts.empty
        state.truncated += counts.truncated
        state.cached += counts.cached
        state.duplicates += counts.duplicates
        _add_labels(state.label_counts, counts.label_counts)
        for name, added in counts.models.items():
            model = state.models.setdefault(name, no_model_counts())
            for key in ("truncated", "cached", "duplicates"):
                model[key] += added[key]
            _add_labels(model["label_counts"], added["label_counts"])
        self._write_state(state)

    def parts(self, state: CommittedState) -> Iterator[pa.RecordBatch]:
        """The committed rows, in order."""
        for index in range(1, state.chunks + 1):
            with pa.memory_map(str(self._part(index))) as source:
                reader = pa.ipc.open_file(source)
                for batch_index in range(reader.num_record_batches):
                    yield reader.get_batch(batch_index)

    @property
    def dedupe_store(self) -> Path:
        """The run's private store of scored texts when no --cache is given (kept for --resume)."""
        return self.directory / "scored-texts.sqlite"

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _part(self, index: int) -> Path:
        return self.directory / f"part-{index:08d}.arrow"

    def _write_state(self, state: CommittedState) -> None:
        with atomic_file(self.state_path) as temporary:
            temporary.write_text(json.dumps({"version": STATE_VERSION, **asdict(state)}, indent=1))
