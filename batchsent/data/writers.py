"""Atomic writers: output goes to a hidden temporary file beside the target and is published under the final
name only by ``commit`` (``storage.publish``), so a crash never leaves a half-written file there. JSON Lines
objects keep their exact text with the predictions added at the end."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchsent.data.formats import compression, file_format
from batchsent.data.storage import publish
from batchsent.errors import OutputError, first_line


def remove_stale_partials(path: Path) -> None:
    """Delete the temporary files a killed writer left beside ``path`` (``.<name>.<random>.partial``); call it only
    while holding ``path``'s lock, when no live writer can own one."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        stale.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; published as ``path`` on a clean exit, removed otherwise.

    Readers of ``path`` never see half a file, whatever happens while it is written.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        yield Path(temporary)
        publish(Path(temporary), path)
    finally:
        Path(temporary).unlink(missing_ok=True)


class AtomicWriter:
    """Writes record batches to a temporary file; ``commit`` renames it to ``path``."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.format = file_format(path, output=True)
        self.schema = schema
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        self.temporary = Path(temporary)
        codec = compression(path)
        try:
            if self.format == "parquet":
                self._writer = pq.ParquetWriter(temporary, schema)
                return
            self._sink = pa.output_stream(temporary, compression=codec)
            if self.format == "csv":
                self._writer = pacsv.CSVWriter(self._sink, schema)
            elif self.format == "jsonl":
                self._writer = _JsonLinesWriter(self._sink, schema)
            else:
                self._writer = _TsvWriter(self._sink, schema)
        except (pa.ArrowException, OSError) as error:
            self.abort()
            raise OutputError(f"{path}: cannot write this schema as {self.format} ({first_line(error)})") from error

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self._writer.write_batch(batch) if self.format == "parquet" else self._writer.write(batch)
        except pa.ArrowException as error:
            raise OutputError(f"{self.path}: cannot write as {self.format}: {first_line(error)}") from error

    def commit(self) -> None:
        """Flush, fsync and rename into place, with the permissions a new file gets."""
        self._writer.close()
        if getattr(self, "_sink", None) is not None:
            self._sink.close()  # ends the compressed stream
        publish(self.temporary, self.path)

    def abort(self) -> None:
        """Drop the temporary file; the final name is never touched."""
        for closable in (getattr(self, "_writer", None), getattr(self, "_sink", None)):
            if closable is not None:
                try:
                    closable.close()
                except Exception:
                    pass
        self.temporary.unlink(missing_ok=True)


class _TsvWriter:
    """Plain TSV (no quoting), so TSV in gives the same bytes out.

    pyarrow's writer cannot leave quotes unquoted, so rows are joined here; a cell
    holding a tab or a line break cannot be represented and is refused.
    """

    def __init__(self, stream: Any, schema: pa.Schema) -> None:
        self._stream = stream
        self._names = schema.names
        self._stream.write(("\t".join(self._names) + "\n").encode())

    def write(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        cells = [pc.fill_null(pc.cast(column, pa.string()), "") for column in batch.columns]
        for name, column in zip(self._names, cells, strict=True):
            if pc.any(pc.match_substring_regex(column, r"[\t\r\n]")).as_py():
                raise pa.ArrowInvalid(f"column {name!r} has a cell with a tab or line break; write .csv or .parquet")
        lines = pc.binary_join_element_wise(*cells, "\t")
        self._stream.write(("\n".join(lines.to_pylist()) + "\n").encode())

    def close(self) -> None:
        pass  # the AtomicWriter closes the stream


class _JsonLinesWriter:
    """Each input line as it came, with the prediction fields added before its closing brace.

    Keys, their order, values and number spellings of the original object are untouched;
    labels are JSON strings, scores the shortest text that reads back as the same float32.
    """

    def __init__(self, stream: Any, schema: pa.Schema) -> None:
        if schema.metadata is None or schema.metadata.get(b"batchsent.format") != b"jsonl":
            raise pa.ArrowInvalid("JSON Lines output needs JSON Lines input (.jsonl or .ndjson)")
        self._stream = stream
        self._first = 1 + int(schema.metadata.get(b"batchsent.jsonl.parsed", b"1"))  # after the line and its texts
        self._keys = [json.dumps(name) for name in schema.names[self._first :]]

    def write(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        values = [_json_values(batch.column(i)) for i in range(self._first, batch.num_columns)]
        out = []
        for row, line in enumerate(batch.column(0).to_pylist()):
            head = line.rstrip()[:-1].rstrip()  # the object without its closing brace
            fields = ", ".join(f"{key}: {column[row]}" for key, column in zip(self._keys, values, strict=True))
            out.append(f"{head}{'' if head.endswith('{') else ', '}{fields}}}")
        self._stream.write(("\n".join(out) + "\n").encode())

    def close(self) -> None:
        pass  # the AtomicWriter closes the stream


def _json_values(column: pa.Array) -> list[str]:
    """JSON spellings of a prediction column's values (null for a null)."""
    if pa.types.is_floating(column.type):
        spelled = pc.cast(column, pa.string()).to_pylist()  # shortest round-trip text of each float32
        return ["null" if v is None else v if any(c in v for c in ".en") else f"{v}.0" for v in spelled]
    if pa.types.is_integer(column.type):
        return ["null" if v is None else str(v) for v in column.to_pylist()]
    return ["null" if v is None else json.dumps(v, ensure_ascii=False) for v in column.to_pylist()]
