"""The two ends of a ``--engine ray`` run, on Ray Data's own extension points.

- ``InputFilesDatasource``: one read task per input file, reading it with the local
  engine's readers (CSV, TSV, JSON Lines, Parquet, plain or compressed, local or on
  s3/gs/az), so every cell is kept exactly as the local engine keeps it. Each row gets a
  stable id: its file's index among the sorted inputs and its row number in that file.
  Ray Data's checkpointing filters rows by that id on ``--resume``.
- ``PartsDatasink``: each scored block is written as Parquet parts named by file and
  first row, beside the output. A retried task writes the same names with the same rows,
  so nothing is doubled.
- ``merge_parts``: on the driver, once Ray is done, each input file's parts are streamed
  in row order (a row written twice is kept once, a missing row is an error) into one
  output file with the local engine's writers, and the run's counts are taken from them:
  every row counted exactly once, however often Ray retried.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchsent.data import readers, writers
from batchsent.data.storage import filesystem_of, write_bytes_atomically, write_parquet_atomically
from batchsent.engine.summary import ModelTotals, RunTotals
from batchsent.errors import ScoringError, first_line

FILE = "__batchsent_file"
ROW = "__batchsent_row"
ROW_ID = "__batchsent_id"  # file index << ROW_BITS | row number: unique across the run, the same on every replay
TRUNCATED = "__batchsent_truncated"  # one column per model: TRUNCATED + "_<model index>"
DIGEST = "__batchsent_digest"  # with --cache: the row's text digest (null when blank)
ROW_BITS = 40
INTERNAL = (FILE, ROW, ROW_ID)


def truncated_column(index: int) -> str:
    return f"{TRUNCATED}_{index}"


def cache_column(kind: str, index: int) -> str:
    """With --cache, per model: ``store`` (probabilities to add to the cache), ``hit``, ``windows``, ``key``."""
    return f"__batchsent_cache_{kind}_{index}"


def _datasource_base() -> type:
    from ray.data.datasource import Datasource

    return Datasource


def make_datasource(
    files: list[str], column: str, pair_column: str | None, chunk_rows: int, reserved: set[str], row_counts: str
) -> Any:
    """The Datasource of ``files`` (paths or URLs, in the run's order); each read task records its file's row
    count under ``row_counts`` once it has read the whole file (``read_row_count``)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import ReadTask

    class InputFilesDatasource(_datasource_base()):  # type: ignore[misc]
        """Each input file read by batchsent's own reader, in chunks of ``chunk_rows``, with row ids."""

        def get_name(self) -> str:
            return "BatchsentInputFiles"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[Any]:
            tasks = []
            for index, source in enumerate(files):
                metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=(source,), exec_stats=None)
                tasks.append(
                    ReadTask(
                        functools.partial(
                            _read_file, index, source, column, pair_column, chunk_rows, reserved, row_counts
                        ),
                        metadata,
                    )
                )
            return tasks

    return InputFilesDatasource()


def _read_file(
    index: int, source: str, column: str, pair_column: str | None, chunk_rows: int, reserved: set[str], row_counts: str
) -> Iterator[pa.Table]:
    from batchsent.data.storage import is_url

    reader = readers.open_reader(source if is_url(source) else Path(source))
    try:
        reader.text_column(column)
        if pair_column is not None:
            reader.text_column(pair_column, "--pair-column")
        if hasattr(reader, "reserved"):
            reader.reserved = set(reserved)
        first = 0
        for batch in reader.batches(chunk_rows):
            rows = np.arange(first, first + batch.num_rows, dtype=np.int64)
            first += batch.num_rows
            table = pa.Table.from_batches([batch]).replace_schema_metadata(None)
            table = table.append_column(FILE, pa.array(np.full(len(rows), index, dtype=np.int32)))
            table = table.append_column(ROW, pa.array(rows))
            yield table.append_column(ROW_ID, pa.array(rows + (np.int64(index) << ROW_BITS)))
    finally:
        reader.close()
    filesystem, root = filesystem_of(row_counts)
    write_bytes_atomically(filesystem, root, f"{index:06d}.json", json.dumps({"rows": first}).encode())


def read_row_count(row_counts: str, index: int, source: str) -> int:
    """How many rows input ``index`` has, as its read task counted them (a ScoringError when no task finished it)."""
    filesystem, root = filesystem_of(row_counts)
    try:
        with filesystem.open_input_stream(f"{root}/{index:06d}.json") as stream:
            return int(json.loads(stream.read())["rows"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ScoringError(
            f"{source}: no read of it finished, so its rows cannot be counted ({first_line(error)}); "
            "run the same command with --resume"
        ) from None


def make_datasink(parts: str) -> Any:
    """The Datasink writing scored blocks as Parquet parts under ``parts`` (a folder or URL prefix)."""
    from ray.data.block import BlockAccessor
    from ray.data.datasource import Datasink

    class PartsDatasink(Datasink):
        """``<parts>/<file index>/<first row>.parquet``: deterministic names, so a retried write replaces its own."""

        def write(self, blocks: Iterable[Any], ctx: Any) -> None:
            filesystem, root = filesystem_of(parts)
            for block in blocks:
                table = BlockAccessor.for_block(block).to_arrow()
                if not table.num_rows:
                    continue
                indexes = table.column(FILE).to_numpy()
                for index in np.unique(indexes):
                    part = table.filter(pa.array(indexes == index))
                    first = int(part.column(ROW)[0].as_py())
                    write_parquet_atomically(filesystem, f"{root}/{int(index):06d}", f"{first:012d}.parquet", part)

    return PartsDatasink()


def list_parts(parts: str, index: int) -> list[str]:
    """The part files of input ``index``, in row order."""
    from pyarrow import fs

    filesystem, root = filesystem_of(parts)
    selector = fs.FileSelector(f"{root}/{index:06d}", allow_not_found=True)
    names = [
        info.path
        for info in filesystem.get_file_info(selector)
        if info.type == fs.FileType.File and info.base_name.endswith(".parquet") and not info.base_name.startswith(".")
    ]
    return sorted(names, key=lambda path: int(path.rsplit("/", 1)[-1].split(".")[0]))


def merge_parts(
    parts: str,
    index: int,
    source: str,
    input_schema: pa.Schema,
    added: list[pa.Field],
    label_columns: list[str],
    target: Path,
    expected_rows: int,
    counts: RunTotals,
    entries: Any = None,
) -> None:
    """Stream input ``index``'s parts into ``target`` (the local engine's writer for its format), each row once,
    and exactly ``expected_rows`` of them: an output that lacks rows (parts lost, another run's cleanup) is never
    published.

    The output's schema is the input's own (``input_schema``, JSON Lines metadata included) followed by the
    prediction columns ``added`` (so a file with no rows gets them too). With a shared cache, ``entries`` (an
    ``EntryWriter``) receives the rows' new entries.
    """
    filesystem, _ = filesystem_of(parts)
    schema = pa.schema(list(input_schema) + added, metadata=input_schema.metadata)
    writer = writers.AtomicWriter(target, schema)
    next_row = 0
    try:
        for path in list_parts(parts, index):
            table = pq.read_table(path, filesystem=filesystem)
            rows = table.column(ROW).to_numpy()
            keep = rows >= next_row  # a row a replay wrote twice is kept once
            if not keep.all():
                table, rows = table.filter(pa.array(keep)), rows[keep]
            if not len(rows):
                continue
            if rows[0] != next_row or (np.diff(rows) != 1).any():
                raise ScoringError(
                    f"{source}: rows {next_row}... are missing from the scored parts; run the same "
                    "command with --resume to score them again"
                )
            next_row = int(rows[-1]) + 1
            _count(table, label_columns, counts)
            if entries is not None:
                _collect_entries(table, len(label_columns), entries)
            output = pa.Table.from_arrays([table.column(name) for name in schema.names], schema=schema)
            for batch in output.to_batches():
                writer.write(batch)
        if next_row != expected_rows:
            raise ScoringError(
                f"{source}: the scored parts hold {next_row:,} of its {expected_rows:,} rows; run the "
                "same command with --resume to score the rest"
            )
        writer.commit()
    except BaseException:
        writer.abort()
        raise


def added_fields(parts: str, count: int, input_schemas: list[pa.Schema]) -> list[pa.Field] | None:
    """The prediction columns the scorers wrote, from the first part of any input (None: no input has a part)."""
    filesystem, _ = filesystem_of(parts)
    for index in range(count):
        listed = list_parts(parts, index)
        if listed:
            names = set(input_schemas[index].names)
            return [
                field
                for field in pq.read_schema(listed[0], filesystem=filesystem)
                if field.name not in names and not field.name.startswith("__batchsent_")
            ]
    return None


def _count(table: pa.Table, label_columns: list[str], counts: RunTotals) -> None:
    counts.rows += table.num_rows
    if not counts.models:
        counts.models = [ModelTotals() for _ in label_columns]
    blank = None
    truncated = np.zeros(table.num_rows, dtype=bool)
    for model, (name, model_counts) in enumerate(zip(label_columns, counts.models, strict=True)):
        labels = table.column(name)
        blank = pc.is_null(labels).to_numpy(zero_copy_only=False)
        model_counts.add_labels(
            {
                found["values"]: found["counts"]
                for found in pc.value_counts(labels).to_pylist()
                if found["values"] is not None
            }
        )
        flags = table.column(truncated_column(model)).to_numpy(zero_copy_only=False)
        model_counts.truncated += int(flags.sum())
        truncated |= flags
        if cache_column("hit", model) in table.column_names:
            hits = int(pc.sum(table.column(cache_column("hit", model))).as_py() or 0)
            model_counts.cached += hits
            counts.cached += hits
    counts.empty += int(blank.sum()) if blank is not None else 0
    counts.truncated += int(truncated.sum())


def _collect_entries(table: pa.Table, models: int, entries: Any) -> None:
    """The rows each model scored in this run (and the hits it refreshes), as entries under its model key."""
    for model in range(models):
        store = cache_column("store", model)
        if store not in table.column_names:
            continue
        rows = table.filter(pc.is_valid(table.column(store)))
        if not rows.num_rows:
            continue
        width = rows.schema.field(store).type.byte_width // 4
        keys = rows.column(cache_column("key", model)).combine_chunks()
        keys = keys.dictionary_decode() if pa.types.is_dictionary(keys.type) else keys
        windows = cache_column("windows", model)
        for key in pc.unique(keys).to_pylist():
            own = rows.filter(pc.equal(keys, key))
            entries.add(
                key,
                width,
                own.column(DIGEST).combine_chunks(),
                own.column(store).combine_chunks(),
                own.column(truncated_column(model)).combine_chunks(),
                own.column(windows).combine_chunks() if windows in own.column_names else None,
            )
