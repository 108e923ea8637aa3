"""One scoring job: reader -> chunks -> Classifier -> prediction columns -> atomic writer.

Reading and tokenizing the next chunk runs in one background thread while the model
scores the current one (a queue of bounded depth keeps memory flat and order intact).
Every check that needs no model runs before the model loads.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from . import io
from .config import JobConfig
from .errors import InputError, OutputError
from .postprocess import column_names, output_fields, prediction_arrays

if TYPE_CHECKING:
    from .model import Classifier, EncodedChunk

T = TypeVar("T")
PREFETCH_DEPTH = 1


class Progress(Protocol):
    """What a job reports while it runs (the CLI draws it; the core only counts)."""

    def start(self, total_rows: int | None, total_bytes: int) -> None: ...

    def advance(self, rows_done: int, bytes_done: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RunSummary:
    """What a finished job did; ``line()`` is the one-line summary users see."""

    input: Path
    output: Path
    rows: int
    scored: int
    empty: int
    truncated: int
    elapsed: float
    label_counts: dict[str, int] = field(default_factory=dict)
    chunked: bool = False

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        labels = ", ".join(f"{label} {count:,}" for label, count in self.label_counts.items())
        return (
            f"{self.rows:,} rows: {self.scored:,} scored, {self.empty:,} empty, {self.truncated:,} "
            + ("over the limit (scored in windows) " if self.chunked else "truncated ")
            + f"in {self.elapsed:.1f} s ({self.rows_per_second:,.0f} rows/s)"
            + (f"; {labels}" if labels else "")
            + f" -> {self.output}"
        )


def check_output(config: JobConfig) -> Path:
    """The output path, refused when it is the input, exists (without overwrite) or cannot be made."""
    output = config.output_path
    io.file_format(output, output=True)
    if output.resolve() == config.input.resolve() or (output.exists() and os.path.samefile(output, config.input)):
        raise OutputError(f"{output}: the output would replace the input; choose another --output")
    if output.is_dir():
        raise OutputError(f"{output}: is a directory")
    if output.exists() and not config.overwrite:
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(f"{output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: cannot write in {parent} (permission denied)")
    return output


def _check_new_columns(names: list[str], schema: pa.Schema, path: Path) -> None:
    taken = [name for name in names if name in schema.names]
    if taken:
        raise InputError(f"{path}: already has column(s) {', '.join(map(repr, taken))}; choose another --prefix")


def _prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """Yield ``items`` produced by one background thread, at most ``depth`` ahead.

    Errors in the producer are raised in the consumer; a consumer that stops early
    stops the producer too.
    """
    slots: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("done", None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            slots.put(("error", error))

    worker = threading.Thread(target=produce, name="batchsent-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get(timeout=0.1)
            except queue.Empty:
                pass


def run(
    config: JobConfig,
    progress: Progress | None = None,
    classifier: Classifier | None = None,
) -> RunSummary:
    """Score ``config.input`` into ``config.output_path`` and return what was done.

    A ready ``classifier`` may be passed to reuse a loaded model across jobs.
    """
    started = time.monotonic()
    output = check_output(config)
    reader = io.open_reader(config.input)
    try:
        column = reader.text_column(config.column)
        _check_new_columns(
            column_names([], config.prefix, False, config.long_text == "chunk"), reader.schema, config.input
        )
        if classifier is None:
            from .model import Classifier

            classifier = Classifier(config.model, **config.classifier_options())
        chunked = classifier.long_text == "chunk"
        names = column_names(classifier.labels, config.prefix, config.all_scores, chunked)
        _check_new_columns(names, reader.schema, config.input)
        schema = reader.schema
        for new_field in output_fields(classifier.labels, config.prefix, config.all_scores, chunked):
            schema = schema.append(new_field)
        return _score(config, reader, column, classifier, schema, output, progress, started)
    finally:
        reader.close()


def _score(
    config: JobConfig,
    reader: io.Reader,
    column: int,
    classifier: Classifier,
    schema: pa.Schema,
    output: Path,
    progress: Progress | None,
    started: float,
) -> RunSummary:
    def encoded() -> Iterator[tuple[pa.RecordBatch, EncodedChunk, int]]:
        for batch in reader.batches(config.chunk_rows):
            yield batch, classifier.encode(io.text_values(batch.column(column))), reader.bytes_read()

    rows = empty = truncated = 0
    label_counts: Counter[str] = Counter()
    if progress is not None:
        progress.start(reader.total_rows, reader.total_bytes)
    writer = io.AtomicWriter(output, schema)
    try:
        for batch, chunk, bytes_done in _prefetched(encoded(), PREFETCH_DEPTH):
            scores = classifier.run(chunk)
            arrays = prediction_arrays(scores.probabilities, classifier.labels, config.all_scores, scores.windows)
            writer.write(pa.RecordBatch.from_arrays(batch.columns + arrays, schema=schema))
            rows += batch.num_rows
            empty += int(scores.blank.sum())
            truncated += int(scores.truncated.sum())
            for entry in pc.value_counts(arrays[0].drop_null()).to_pylist():
                label_counts[entry["values"]] += entry["counts"]
            if progress is not None:
                progress.advance(rows, bytes_done)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        if progress is not None:
            progress.close()
    ordered = {label: label_counts[label] for label in classifier.labels if label_counts[label]}
    elapsed = time.monotonic() - started
    chunked = classifier.long_text == "chunk"
    return RunSummary(config.input, output, rows, rows - empty, empty, truncated, elapsed, ordered, chunked)
