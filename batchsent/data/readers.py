"""Streaming readers of CSV, TSV, JSON Lines and Parquet files and objects, with pyarrow.

CSV and TSV cells are read as strings, so every cell is written back as the same text (no type
inference: ``007`` stays ``007``); Parquet keeps its schema and metadata; a JSON Lines object is kept
as its exact text. CSV, TSV and JSON Lines may be compressed (``.gz``, ``.bz2``, ``.zst``).
"""

from __future__ import annotations

import codecs
import csv
import io as stdio
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchsent.data.formats import JSONL_LINE, JSONL_MARK, TEXT_TYPES, check_input, compression, file_format
from batchsent.data.storage import check_readable, is_url, remote
from batchsent.errors import ColumnNotFound, InputError, first_line

CSV_BLOCK_BYTES = 1 << 20
MAX_CSV_BLOCK_BYTES = 1 << 30  # pyarrow takes a block of up to 2 GiB; a row of 1 GiB is a damaged file
REMOTE_READ_BYTES = 16 << 20  # an object is read in ranged GETs of this size: few requests, bounded memory
JSONL_CHUNK_BYTES = 8 << 20


def open_binary(path: Path | str) -> tuple[Any, Any]:
    """``(raw file, decompressed stream)`` of a file or object; the raw position tells how far reading got."""
    if is_url(path):
        location = remote(str(path))
        try:  # ranged GETs of REMOTE_READ_BYTES each; decompression is ours (pyarrow would guess it from the suffix)
            raw: Any = _Counted(
                location.fs.open_input_stream(location.path, compression=None, buffer_size=REMOTE_READ_BYTES)
            )
        except OSError as error:
            raise InputError(f"{path}: cannot read ({first_line(error)})") from error
    else:
        raw = open(path, "rb")  # noqa: SIM115 - the caller closes both
    codec = compression(path)
    return raw, (pa.input_stream(raw, compression=codec) if codec else raw)


class _Counted(stdio.RawIOBase):
    """A non-seekable pyarrow stream that knows how many bytes were read from it (``tell``), for progress."""

    def __init__(self, stream: Any) -> None:
        self._stream, self._position = stream, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read() if size is None or size < 0 else self._stream.read(size)
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._stream.close()
        super().close()


@contextmanager
def text_lines(path: Path | str) -> Iterator[stdio.TextIOWrapper]:
    """``path`` decompressed, as text lines (error paths: finding the line of a bad byte or row)."""
    raw, stream = open_binary(path)
    try:
        yield stdio.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")
    finally:
        stream.close()
        raw.close()


class Reader:
    """Record batches of one input file, ``chunk_rows`` rows each (the last may be short)."""

    schema: pa.Schema
    total_rows: int | None = None
    total_bytes: int = 0
    _raw: Any = None  # a streamed reader's raw (compressed) file: its position is the progress

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.total_bytes = check_readable(remote(str(path))) if is_url(path) else Path(path).stat().st_size
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
        """Bytes of the file consumed so far: the raw (compressed) position of a streamed reader."""
        if self._raw is None or self._raw.closed:
            return self.total_bytes
        return min(self._raw.tell(), self.total_bytes)

    def _batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        yield from rechunk(self._counted(self._batches(chunk_rows)), chunk_rows)

    def _counted(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            self.rows_read += batch.num_rows
            yield batch

    def text_column(self, name: str, option: str = "--column") -> int:
        """Index of the text column ``name`` (given as ``option``); refuses a missing, duplicated or non-text column."""
        names = self.schema.names
        if name not in names:
            shown = ", ".join(repr(n) for n in names)
            raise ColumnNotFound(f"{self.path}: no column {name!r}; the file has {shown} (pick one with {option})")
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
    def __init__(self, path: Path | str) -> None:
        super().__init__(path)
        try:
            if is_url(path):
                location = remote(str(path))
                self._file = pq.ParquetFile(location.fs.open_input_file(location.path))
            else:
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
    """CSV (quoted cells may hold delimiters and line breaks) or TSV (no quoting).

    pyarrow parses in blocks that must hold a whole row; a row longer than the block (a cell of megabytes) is
    read again with a block four times larger, up to MAX_CSV_BLOCK_BYTES, skipping the rows already given.
    """

    def __init__(self, path: Path | str, delimiter: str) -> None:
        super().__init__(path)
        self._invalid_row: str | None = None
        self._invalid_utf8 = False  # set by _quiet_undecodable_rows when pyarrow cannot even show the bad row
        self._block = CSV_BLOCK_BYTES
        self._parse = pacsv.ParseOptions(
            delimiter=delimiter,
            quote_char='"' if delimiter == "," else False,
            newlines_in_values=delimiter == ",",
            invalid_row_handler=self._on_invalid_row,
        )
        _install_undecodable_row_filter()
        self._raw, self._stream = open_binary(path)
        try:
            self._refuse_utf16()
            try:
                names = self._opened(None).schema.names  # pyarrow decodes the header only here
            except UnicodeDecodeError as error:
                raise self._error(error) from None
            if len(names) == 1:
                # With one column an empty line is an empty cell, not a line to skip.
                self._parse.ignore_empty_lines = False
            self._types = {name: pa.string() for name in names}
            self._reader = self._opened(self._types)
        except BaseException:
            self.close()
            raise
        self.schema = self._reader.schema

    def _refuse_utf16(self) -> None:
        with open_binary(self.path)[1] as start:
            head = start.read(2)
        if head in (b"\xff\xfe", b"\xfe\xff"):
            raise InputError(
                f"{self.path}: UTF-16 text (it starts with a UTF-16 byte-order mark); batchsent reads "
                "UTF-8: convert it first, e.g. iconv -f UTF-16 -t UTF-8"
            )

    def _opened(self, column_types: dict[str, pa.DataType] | None) -> pacsv.CSVStreamingReader:
        """A reader from the file's start, with the current block size, growing it for a row longer than a block."""
        while True:
            self.close()
            self._raw, self._stream = open_binary(self.path)
            try:
                return self._open(column_types)
            except InputError as error:
                if not self._grow(error):
                    raise

    def _grow(self, error: BaseException) -> bool:
        """A larger block after pyarrow's "straddling object" error (True), or False at the largest block."""
        if "straddling" not in str(error.__cause__ or error) or self._block >= MAX_CSV_BLOCK_BYTES:
            return False
        self._block = min(self._block * 4, MAX_CSV_BLOCK_BYTES)
        return True

    def _open(self, column_types: dict[str, pa.DataType] | None) -> pacsv.CSVStreamingReader:
        convert = pacsv.ConvertOptions(column_types=column_types or {}, strings_can_be_null=False)
        read = pacsv.ReadOptions(block_size=self._block, use_threads=True)
        try:
            return pacsv.open_csv(self._stream, read_options=read, parse_options=self._parse, convert_options=convert)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
            raise self._error(error) from error

    def _on_invalid_row(self, row: pacsv.InvalidRow) -> str:
        line = row.number if row.number is not None else self._line_of_bad_row(row.expected_columns)
        self._invalid_row = f"line {line}: expected {row.expected_columns} fields, got {row.actual_columns}"
        return "error"

    def _line_of_bad_row(self, expected: int) -> int | str:
        """Physical line where the first record with the wrong field count ends (error path only)."""
        delimiter = self._parse.delimiter
        quoting: Literal[0, 3] = csv.QUOTE_MINIMAL if self._parse.quote_char else csv.QUOTE_NONE
        with text_lines(self.path) as stream:
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
        if "invalid UTF8" in message or isinstance(error, UnicodeDecodeError) or self._invalid_utf8:
            line = first_invalid_utf8_line(self.path)
            return InputError(f"{self.path}: line {line}: bytes that are not valid UTF-8")
        if self._invalid_row:
            return InputError(f"{self.path}: {self._invalid_row}")
        if "Empty CSV file" in message:
            return InputError(f"{self.path}: the file is empty (no header line)")
        if "straddling" in message:
            return InputError(f"{self.path}: a row longer than {MAX_CSV_BLOCK_BYTES >> 20} MiB (pyarrow: {message})")
        return InputError(f"{self.path}: not a readable CSV file ({message})")

    def _batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        given = skip = 0  # rows yielded; rows to drop after a re-read from the start with a larger block
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
                if not self._grow(error):
                    raise self._error(error) from error
                self._reader, skip = self._opened(self._types), given
                continue
            if skip:
                dropped = min(skip, batch.num_rows)
                batch, skip = batch.slice(dropped), skip - dropped
                if not batch.num_rows:
                    continue
            given += batch.num_rows
            yield batch

    def close(self) -> None:
        for stream in (getattr(self, "_stream", None), getattr(self, "_raw", None)):
            if stream is not None:
                stream.close()


_previous_unraisable_hook: Any = None


def _install_undecodable_row_filter() -> None:
    """pyarrow decodes a row of the wrong width as UTF-8 before calling CsvReader._on_invalid_row; when that fails
    it prints "Exception ignored" and a traceback, then stops with a parse error. This filter (installed once,
    everything else handed on) keeps that off the terminal and tells the reader to name the bad line instead."""
    global _previous_unraisable_hook
    if _previous_unraisable_hook is not None:
        return
    _previous_unraisable_hook = sys.unraisablehook

    def quiet(unraisable: Any) -> None:
        handler = unraisable.object
        if isinstance(unraisable.exc_value, UnicodeDecodeError) and isinstance(
            getattr(handler, "__self__", None), CsvReader
        ):
            handler.__self__._invalid_utf8 = True
            return
        _previous_unraisable_hook(unraisable)

    sys.unraisablehook = quiet


def _jsonl_schema(keys: list[str]) -> pa.Schema:
    """The line, then each parsed text key; the metadata tells the writer how many columns to skip."""
    fields = [(JSONL_LINE, pa.string())] + [(key, pa.string()) for key in keys]
    return pa.schema(fields, metadata={**JSONL_MARK, b"batchsent.jsonl.parsed": str(len(keys)).encode()})


class JsonLinesReader(Reader):
    """JSON Lines: one JSON object per line, kept as its exact text; the text field is parsed out of it.

    Batches hold two columns, the line (``JSONL_LINE``) and the text, under a schema marked
    with ``JSONL_MARK`` so the writer puts the line back with the predictions at its end.
    Blank lines are skipped. A line that is not a JSON object, a text that is not a string,
    or an object that already has a prediction key is an InputError naming the line.
    """

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)
        self._raw, stream = open_binary(path)
        self._lines = stdio.TextIOWrapper(stream, encoding="utf-8", errors="strict", newline="\n")
        self._line_number = 0
        self._pending: str | None = None
        self.keys: list[str] = []  # the text keys parsed out (the text, and a --pair-column)
        self.reserved: set[str] = set()  # prediction keys a line must not have already
        self.schema = _jsonl_schema([])
        try:
            self._pending = self._next_line()
        except BaseException:
            self.close()
            raise
        if self._pending is None:
            self.close()
            raise InputError(f"{path}: the file is empty (no JSON object)")

    def _next_line(self) -> str | None:
        """The next non-blank line (its number in ``_line_number``), None at the end."""
        while True:
            try:
                line = self._lines.readline()
            except UnicodeDecodeError:  # decoded a block ahead of the line being read: find the line itself
                line_number = first_invalid_utf8_line(self.path)
                raise InputError(f"{self.path}: line {line_number}: bytes that are not valid UTF-8") from None
            except (OSError, EOFError, pa.ArrowException) as error:
                raise InputError(f"{self.path}: cannot read ({first_line(error)})") from error
            if not line:
                return None
            self._line_number += 1
            if line.strip():
                return line.rstrip("\r\n").lstrip("\ufeff") if self._line_number == 1 else line.rstrip("\r\n")

    def _object(self, line: str, spelled: bool = False) -> dict[str, Any]:
        """The line's object. Numbers are not converted (only the text keys are used, and a 5,000-digit
        integer would exceed Python's conversion limit): ``spelled`` keeps them as their text, else they
        become opaque; nesting too deep to parse is an InputError."""
        number = str if spelled else _number
        try:
            value = json.loads(line, parse_int=number, parse_float=number, parse_constant=number)
        except json.JSONDecodeError as error:
            raise InputError(f"{self.path}: line {self._line_number}: not valid JSON ({error.msg})") from None
        except RecursionError:
            raise InputError(
                f"{self.path}: line {self._line_number}: arrays or objects nested too deeply to read"
            ) from None
        if not isinstance(value, dict):
            raise InputError(f"{self.path}: line {self._line_number}: not a JSON object but {type(value).__name__}")
        return value

    def text_column(self, name: str, option: str = "--column") -> int:
        """The text key ``name``, which the first object must have; its column follows the line's."""
        first = self._object(self._pending)  # type: ignore[arg-type]
        if name not in first:
            shown = ", ".join(repr(k) for k in first) or "no keys"
            raise ColumnNotFound(
                f"{self.path}: line {self._line_number}: no key {name!r}; the object has {shown} "
                f"(pick one with {option})"
            )
        if name not in self.keys:
            self.keys.append(name)
            self.schema = _jsonl_schema(self.keys)
        return 1 + self.keys.index(name)

    def _objects(self, spelled: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each non-blank line and its object (see ``_object``), the first line included."""
        while True:
            line = self._pending if self._pending is not None else self._next_line()
            self._pending = None
            if line is None:
                return
            yield line, self._object(line, spelled)

    def _batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        lines: list[str] = []
        texts: list[list[str | None]] = [[] for _ in self.keys]
        for line, value in self._objects():
            taken = self.reserved.intersection(value)
            if taken:
                raise InputError(
                    f"{self.path}: line {self._line_number}: already has key(s) "
                    f"{', '.join(map(repr, sorted(taken)))}; choose another --prefix"
                )
            for key, column in zip(self.keys, texts, strict=True):
                text = value.get(key)
                if text is not None and not isinstance(text, str):
                    kind = "a number" if isinstance(text, _Number) else type(text).__name__
                    raise InputError(f"{self.path}: line {self._line_number}: {key!r} holds {kind}, not text")
                if text is not None and not _encodable(text):
                    raise InputError(
                        f"{self.path}: line {self._line_number}: {key!r} holds an escaped lone "
                        "surrogate (such as \\ud800), which is not Unicode text"
                    )
                column.append(text)
            lines.append(line)
            if len(lines) == chunk_rows:
                yield pa.record_batch([lines, *texts], schema=self.schema)
                lines, texts = [], [[] for _ in self.keys]
        if lines:
            yield pa.record_batch([lines, *texts], schema=self.schema)

    def close(self) -> None:
        self._lines.close()
        self._raw.close()


class JsonLinesFields(JsonLinesReader):
    """JSON Lines read back as a table (a scored file, for reports): every key of the first object is a
    column of text, numbers as written, objects and arrays as JSON, and a missing key null."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)
        self.keys = list(self._object(self._pending))  # type: ignore[arg-type]
        self.schema = pa.schema([(key, pa.string()) for key in self.keys])

    def text_column(self, name: str, option: str = "--column") -> int:
        return Reader.text_column(self, name, option)

    def _batches(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        columns: list[list[str | None]] = [[] for _ in self.keys]
        for _, value in self._objects(spelled=True):
            for key, column in zip(self.keys, columns, strict=True):
                cell = value.get(key)
                column.append(cell if cell is None or isinstance(cell, str) else json.dumps(cell, ensure_ascii=False))
            if len(columns[0]) == chunk_rows:
                yield pa.record_batch(columns, schema=self.schema)
                columns = [[] for _ in self.keys]
        if columns and columns[0]:
            yield pa.record_batch(columns, schema=self.schema)


class _Number:
    """A JSON number left unconverted (its value is never needed)."""


def _number(spelling: str) -> _Number:
    return _Number()


def _encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode (a JSON escape can produce a lone surrogate, which is not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def open_reader(path: Path | str, *, table: bool = False) -> Reader:
    """Open a file or object for streaming; raises InputError for anything unreadable. ``table``: JSON Lines
    with every key as a column (``JsonLinesFields``, to read a scored file back) instead of lines and texts."""
    fmt = file_format(path) if is_url(path) else check_input(path)  # an object is checked by its reader
    if fmt == "parquet":
        return ParquetReader(path)
    if fmt == "jsonl":
        return JsonLinesFields(path) if table else JsonLinesReader(path)
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


def first_invalid_utf8_line(path: Path | str) -> int:
    """1-based line number of the first byte sequence in ``path`` that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    raw, stream = open_binary(path)
    with raw, stream:
        while block := stream.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                return line + block[: error.start].count(b"\n")
            line += block.count(b"\n")
    return line
