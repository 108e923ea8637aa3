"""Reading and writing keep every input cell exactly; writes are atomic."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchsent.data import readers, writers
from batchsent.errors import ColumnNotFound, InputError, OutputError

cell_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


def write_csv_rows(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> None:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, delimiter=delimiter, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows(rows)


def read_csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.reader(stream))


def copy_through(source: Path, target: Path, chunk_rows: int = 3) -> None:
    reader = readers.open_reader(source)
    writer = writers.AtomicWriter(target, reader.schema)
    for batch in reader.batches(chunk_rows):
        writer.write(batch)
    writer.commit()
    reader.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(cell_text, cell_text), min_size=1, max_size=12))
def test_csv_cells_survive_a_round_trip(tmp_path, rows):
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    target.unlink(missing_ok=True)
    write_csv_rows(source, ["id", "text"], [list(r) for r in rows])
    copy_through(source, target)
    assert read_csv_rows(target) == [["id", "text"], *[list(r) for r in rows]]


def test_tricky_cells_stay_the_same_text(tmp_path):
    rows = [["007", "a, b", ""], ["5.70306E+17", 'say "hi"', "NaN"], ["NULL", "line\nbreak\r\nmore", " "]]
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    write_csv_rows(source, ["id", "text", "note"], rows)
    reader = readers.open_reader(source)
    assert all(f.type == pa.string() for f in reader.schema)
    reader.close()
    copy_through(source, target)
    assert read_csv_rows(target)[1:] == rows


def test_tsv_round_trip_is_byte_for_byte(tmp_path):
    source, target = tmp_path / "in.tsv", tmp_path / "out.tsv"
    source.write_text('sentence\tlabel\n"quoted" start\t1\nit\'s 007\t0\n\t1\n', encoding="utf-8")
    copy_through(source, target)
    assert target.read_bytes() == source.read_bytes()


def test_tsv_output_refuses_cells_with_line_breaks(tmp_path):
    source, target = tmp_path / "in.csv", tmp_path / "out.tsv"
    write_csv_rows(source, ["text"], [["one\ntwo"]])
    with pytest.raises(OutputError, match="tab or line break"):
        copy_through(source, target)


def test_parquet_keeps_types_values_and_metadata(tmp_path):
    table = pa.table(
        {
            "id": pa.array([1, 2, None], pa.int64()),
            "text": ["a", None, "c"],
            "when": pa.array([1, 2, 3], pa.timestamp("ms")),
        }
    ).replace_schema_metadata({"owner": "analytics"})
    source, target = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(table, source)
    copy_through(source, target)
    result = pq.read_table(target)
    assert result.equals(table) and result.schema.metadata == table.schema.metadata


def test_rechunk_cuts_exact_sizes():
    batches = [pa.record_batch({"x": list(range(n))}) for n in (5, 0, 2, 7)]
    sizes = [b.num_rows for b in readers.rechunk(iter(batches), 4)]
    assert sizes == [4, 4, 4, 2]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"id,text\n1,ok\n2,\xff\xfe bad\n", "line 3: bytes that are not valid UTF-8"),
        (b'id,text\n1,"o\nk"\n2,too,many\n', "line 4: expected 2 fields, got 3"),
    ],
)
def test_bad_csv_is_one_clear_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as raised:
        reader = readers.open_reader(path)
        list(reader.batches(100))
    assert str(path) in str(raised.value)


def test_utf8_error_line_is_found_deep_in_a_file(tmp_path):
    path = tmp_path / "deep.csv"
    path.write_bytes(b"id,text\n" + b"1,fine\n" * 300_000 + b"2,caf\xe9\n")
    with pytest.raises(InputError, match="line 300002:"):
        list(readers.open_reader(path).batches(4096))


def test_missing_column_lists_the_columns(tmp_path):
    path = tmp_path / "in.csv"
    write_csv_rows(path, ["id", "review"], [["1", "x"]])
    with pytest.raises(ColumnNotFound, match="no column 'text'; the file has 'id', 'review'"):
        readers.open_reader(path).text_column("text")


def test_non_text_parquet_column_is_refused(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(InputError, match="holds int64, not text"):
        readers.open_reader(path).text_column("text")


def test_corrupt_parquet_names_the_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"broken\.parquet: not a readable Parquet file"):
        readers.open_reader(path)


def test_abort_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.csv"
    writer = writers.AtomicWriter(target, pa.schema([("x", pa.string())]))
    writer.write(pa.record_batch({"x": ["a"]}))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_commit_renames_into_place_with_normal_permissions(tmp_path):
    target = tmp_path / "out.parquet"
    writer = writers.AtomicWriter(target, pa.schema([("x", pa.string())]))
    assert not target.exists() and writer.temporary.exists()
    writer.write(pa.record_batch({"x": ["a"]}))
    writer.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]
    assert target.stat().st_mode & 0o444 == 0o444


def test_bom_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,id\nhello,1\n".encode())
    assert readers.open_reader(path).schema.names == ["text", "id"]


def test_single_column_csv_keeps_empty_lines_as_empty_cells(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("text\nfirst\n\nthird\n")
    rows = [r for b in readers.open_reader(path).batches(10) for r in b.column(0).to_pylist()]
    assert rows == ["first", "", "third"]
