"""Streaming reads and atomic writes of CSV, TSV and Parquet files with pyarrow.

CSV and TSV cells are read as strings, so every cell is written back as the same text
(no type inference: ``007`` stays ``007``); Parquet keeps its schema and metadata.
Output goes to a hidden temporary file beside the target and is renamed into place
only by ``commit``: a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import codecs
import csv
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import ColumnNotFound, InputError, OutputError, first_line

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
CSV_BLOCK_BYTES = 1 << 20
TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view())


def file_format(path: Path, *, output: bool = False) -> str:
    """``csv``, ``tsv`` or ``parquet`` from the suffix; anything else is refused."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        error = OutputError if output else InputError
        raise error(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; use .csv, .tsv or .parquet")
    return fmt


class Reader:
    """Record batches of one input file, ``chunk_rows`` rows each (the last may be short)."""

    schema: pa.Schema
    total_rows: int | None = None
    total_bytes: int = 0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.total_bytes = path.stat().st_size
        self.rows_read = 0

    def estimated_rows(self) -> int | None:
        """The file's row count: exact for Parquet; for CSV/TSV extrapolated from the rows and bytes read so far."""
        if self.total_rows is not None:
            return self.total_rows
        read = self.bytes_read()
        if not self.rows_read or not read:
            return None
        return max(self.rows_read, round(self.rows_read * self.total_bytes / read))

    def bytes_read(self) -> int:
        return self.total_bytes

    def _batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        yield from rechunk(self._counted(self._batches(chunk_rows)), chunk_rows)

    def _counted(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            self.rows_read += batch.num_rows
            yield batch

    def text_column(self, name: str) -> int:
        """Index of the text column ``name``; refuses a missing, duplicated or non-text column."""
        names = self.schema.names
        if name not in names:
            shown = ", ".join(repr(n) for n in names)
            raise ColumnNotFound(f"{self.path}: no column {name!r}; the file has {shown} (pick one with --column)")
        if names.count(name) > 1:
            raise InputError(f"{self.path}: column {name!r} appears {names.count(name)} times")
        field = self.schema.field(name)
        value_type = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if value_type not in TEXT_TYPES:
            raise InputError(f"{self.path}: column {name!r} holds {field.type}, not text")
        return names.index(name)

    def close(self) -> None:
        pass


class ParquetReader(Reader):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"{path}: not a readable Parquet file ({first_line(error)})") from error
        self.schema = self._file.schema_arrow
        self.total_rows = self._file.metadata.num_rows

    def _batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._file.iter_batches(batch_size=chunk_rows)
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"{self.path}: corrupt Parquet data ({first_line(error)})") from error

    def close(self) -> None:
        self._file.close()


class CsvReader(Reader):
    """CSV (quoted cells may hold delimiters and line breaks) or TSV (no quoting)."""

    def __init__(self, path: Path, delimiter: str) -> None:
        super().__init__(path)
        self._invalid_row: str | None = None
        self._parse = pacsv.ParseOptions(
            delimiter=delimiter,
            quote_char='"' if delimiter == "," else False,
            newlines_in_values=delimiter == ",",
            invalid_row_handler=self._on_invalid_row,
        )
        self._stream = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            names = self._open(None).schema.names
            if len(names) == 1:
                # With one column an empty line is an empty cell, not a line to skip.
                self._parse.ignore_empty_lines = False
            self._stream.seek(0)
            self._reader = self._open({name: pa.string() for name in names})
        except BaseException:
            self._stream.close()
            raise
        self.schema = self._reader.schema

    def _open(self, column_types: dict[str, pa.DataType] | None) -> pacsv.CSVStreamingReader:
        convert = pacsv.ConvertOptions(column_types=column_types or {}, strings_can_be_null=False)
        read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=True)
        try:
            return pacsv.open_csv(self._stream, read_options=read, parse_options=self._parse, convert_options=convert)
        except (pa.ArrowException, OSError) as error:
            raise self._error(error) from error

    def _on_invalid_row(self, row: pacsv.InvalidRow) -> str:
        line = row.number if row.number is not None else self._line_of_bad_row(row.expected_columns)
        self._invalid_row = f"line {line}: expected {row.expected_columns} fields, got {row.actual_columns}"
        return "error"

    def _line_of_bad_row(self, expected: int) -> int | str:
        """Physical line where the first record with the wrong field count ends (error path only)."""
        delimiter = self._parse.delimiter
        quoting = csv.QUOTE_MINIMAL if self._parse.quote_char else csv.QUOTE_NONE
        with open(self.path, newline="", encoding="utf-8", errors="replace") as stream:
            records = csv.reader(stream, delimiter=delimiter, quoting=quoting)
            try:
                for record in records:
                    if record and len(record) != expected:
                        return records.line_num
            except csv.Error:
                pass
        return "?"

    def _error(self, error: BaseException) -> InputError:
        message = first_line(error)
        if "invalid UTF8" in message:
            line = first_invalid_utf8_line(self.path)
            return InputError(f"{self.path}: line {line}: bytes that are not valid UTF-8")
        if self._invalid_row:
            return InputError(f"{self.path}: {self._invalid_row}")
        if "Empty CSV file" in message:
            return InputError(f"{self.path}: the file is empty (no header line)")
        return InputError(f"{self.path}: not a readable CSV file ({message})")

    def bytes_read(self) -> int:
        return min(self._stream.tell(), self.total_bytes) if not self._stream.closed else self.total_bytes

    def _batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as error:
                raise self._error(error) from error
            yield batch

    def close(self) -> None:
        self._stream.close()


def open_reader(path: Path) -> Reader:
    """Open ``path`` for streaming; raises InputError for anything unreadable."""
    fmt = file_format(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    if fmt == "parquet":
        return ParquetReader(path)
    return CsvReader(path, "\t" if fmt == "tsv" else ",")


def rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Re-cut a stream of record batches into batches of exactly ``rows`` rows (last: fewer)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == rows:
                yield pa.concat_batches(pending) if len(pending) > 1 else pending[0]
                pending, count = [], 0
    if count:
        yield pa.concat_batches(pending) if len(pending) > 1 else pending[0]


def text_values(column: pa.Array) -> list[str | None]:
    """Python strings of a text column (dictionary-encoded or not)."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column.to_pylist()


def first_invalid_utf8_line(path: Path) -> int:
    """1-based line number of the first byte sequence in ``path`` that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                return line + block[: error.start].count(b"\n")
            line += block.count(b"\n")
    return line


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temporary: Path, path: Path) -> None:
    """Make a finished temporary file durable and rename it to ``path`` (atomic on one filesystem)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    _fsync(temporary)
    os.replace(temporary, path)
    _fsync(path.parent)


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
        try:
            if self.format == "parquet":
                self._writer = pq.ParquetWriter(temporary, schema)
            elif self.format == "csv":
                self._writer = pacsv.CSVWriter(temporary, schema)
            else:
                self._writer = _TsvWriter(temporary, schema)
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
        publish(self.temporary, self.path)

    def abort(self) -> None:
        """Drop the temporary file; the final name is never touched."""
        writer = getattr(self, "_writer", None)
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - already failing; the file is removed below
                pass
        self.temporary.unlink(missing_ok=True)


class _TsvWriter:
    """Plain TSV (no quoting), so TSV in gives the same bytes out.

    pyarrow's writer cannot leave quotes unquoted, so rows are joined here; a cell
    holding a tab or a line break cannot be represented and is refused.
    """

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self._stream = open(path, "wb")  # noqa: SIM115 - closed by close()
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
        self._stream.close()

