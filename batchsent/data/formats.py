"""File formats and compression from a file name, and the checks of an input or output format before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from batchsent.data.storage import check_readable, is_url, remote
from batchsent.errors import InputError, OutputError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view())
JSONL_MARK = {b"batchsent.format": b"jsonl"}  # schema metadata of JSON Lines batches: [line, text, predictions...]
JSONL_LINE = "__jsonl_line__"


def base_name(path: Path | str) -> str:
    """The file name of a local path or of an object URL (``s3://bucket/a/b.csv`` -> ``b.csv``)."""
    return path.name if isinstance(path, Path) else str(path).rstrip("/").rsplit("/", 1)[-1]


def split_suffix(name: str) -> tuple[str, str, str]:
    """``(stem, format suffix, compression suffix)`` of a file name: ``x.csv.gz`` -> ``("x", ".csv", ".gz")``."""
    stem, compressed = os.path.splitext(name)
    if compressed.lower() not in COMPRESSIONS:
        stem, compressed = name, ""
    stem, suffix = os.path.splitext(stem)
    return stem, suffix, compressed


def file_format(path: Path | str, *, output: bool = False) -> str:
    """``csv``, ``tsv``, ``jsonl`` or ``parquet`` from the suffix (after any compression suffix)."""
    _, suffix, compressed = split_suffix(base_name(path))
    fmt = FORMATS.get(suffix.lower())
    error = OutputError if output else InputError
    if fmt is None and not (suffix + compressed):
        what = "an output" if output else "an input"
        raise error(
            f"{path}: no suffix to tell {what} file's format from; name a .csv, .tsv, .jsonl or .parquet file"
            + (" (or an existing folder to write into)" if output else "")
        )
    if fmt is None:
        raise error(
            f"{path}: unsupported file type {suffix + compressed!r}; use .csv, .tsv, .jsonl or .parquet "
            "(CSV, TSV and JSON Lines may end in .gz, .bz2 or .zst)"
        )
    if fmt == "parquet" and compressed:
        raise error(f"{path}: Parquet is compressed inside the file; drop the {compressed} suffix")
    return fmt


def compression(path: Path | str) -> str | None:
    """pyarrow's codec name for a compressed file (``gzip``, ``bz2``, ``zstd``), None when plain."""
    return COMPRESSIONS.get(split_suffix(base_name(path))[2].lower())


def check_input(path: Path | str) -> str:
    """The input's format, after checking it exists and can be read (an object: its bucket and key)."""
    fmt = file_format(path)
    if is_url(path):
        check_readable(remote(str(path)))
    elif not path.exists():  # type: ignore[union-attr]
        raise InputError(f"{path}: no such file")
    elif not path.is_file():  # type: ignore[union-attr]
        raise InputError(f"{path}: not a file")
    elif not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    return fmt


def check_output_format(source: Path | str, output: Path | str) -> None:
    """Refuse an output format the input cannot become: JSON Lines is written only from, and as, JSON Lines."""
    if (file_format(source) == "jsonl") != (file_format(output, output=True) == "jsonl"):
        raise OutputError(
            f"{output}: JSON Lines input is written as JSON Lines (.jsonl or .ndjson), and only JSON Lines input can be"
        )


def check_output_schema(schema: pa.Schema, output: Path | str, source: Path | str) -> None:
    """Refuse, before any row is scored, an input column that the output's format cannot hold: CSV and TSV
    cells are text, so nested columns and bytes (not always UTF-8) have no faithful cell."""
    if file_format(output, output=True) not in ("csv", "tsv"):
        return
    for field in schema:
        kind = field.type
        if (
            pa.types.is_nested(kind)
            or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)
            or pa.types.is_fixed_size_binary(kind)
        ):
            raise InputError(
                f"{source}: column {field.name!r} holds {kind}, which a {file_format(output, output=True)} "
                "output cannot hold; write .parquet (or drop the column first)"
            )
