"""Folders and globs for the local engine, JSON Lines in and out, compressed inputs."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import fail_third_chunk, varied_texts
from typer.testing import CliRunner

from batchsent import score_file
from batchsent.cli import app

runner = CliRunner()


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def write_csv(path: Path, texts: list[str], first_id: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f'{first_id + i:03d},"{t}"\n' for i, t in enumerate(texts))
    path.write_text("id,text\n" + body, encoding="utf-8")
    return path


@pytest.fixture
def exports(tmp_path) -> Path:
    """A nightly export folder: part files in subfolders, plus what export tools leave beside them."""
    root = tmp_path / "exports"
    for index, name in enumerate(["part-000.csv", "part-001.csv", "2026-11-26/part-000.csv"]):
        write_csv(root / name, varied_texts(30 + index, seed=index, longest_words=40), first_id=100 * index)
    (root / "_SUCCESS").write_text("")
    (root / ".part-000.csv.crc").write_text("crc")
    (root / ".staging").mkdir()
    write_csv(root / ".staging" / "part-009.csv", ["half written"])
    return root


def test_a_folder_gives_one_output_per_file_each_identical_to_scoring_it_alone(exports, tmp_path, binary_model):
    out = tmp_path / "scored"
    result = runner.invoke(
        app, ["score", str(exports), "-o", str(out), "--model", str(binary_model), "--chunk-rows", "16"]
    )
    assert result.exit_code == 0, result.output
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert made == ["2026-11-26/part-000.csv", "part-000.csv", "part-001.csv"]  # hidden and foreign files skipped
    for name in made:
        alone = tmp_path / "alone" / name
        alone.parent.mkdir(parents=True, exist_ok=True)
        score_file(exports / name, alone, model=str(binary_model), chunk_rows=16, quiet=True)
        assert (out / name).read_bytes() == alone.read_bytes()
    assert "93 rows: 93 scored" in result.output  # the summary covers every file
    assert not [
        p
        for p in tmp_path.rglob(".*")
        if p.name != ".staging" and ".staging" not in p.parts and p.name != ".part-000.csv.crc"
    ]  # no progress or lock files left behind


def test_a_glob_and_the_default_output_folder(exports, tmp_path, binary_model):
    result = runner.invoke(
        app, ["score", str(exports / "*.csv"), "-o", str(tmp_path / "flat"), "--model", str(binary_model), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["part-000.csv", "part-001.csv"]
    result = runner.invoke(app, ["score", str(exports), "--model", str(binary_model), "-q"])
    assert result.exit_code == 0 and (tmp_path / "exports.scored" / "2026-11-26" / "part-000.csv").is_file()


def test_resume_skips_finished_files_and_continues_the_one_in_progress(exports, tmp_path, binary_model, monkeypatch):
    out = tmp_path / "scored"
    reference = tmp_path / "reference"
    score_file(exports, reference, model=str(binary_model), chunk_rows=8, quiet=True)
    with monkeypatch.context() as patch:
        fail_third_chunk(patch, "CUDA error: out of memory")  # the 3rd chunk overall: in part-000.csv of 2026-11-26
        with pytest.raises(Exception, match="out of memory"):
            score_file(exports, out, model=str(binary_model), chunk_rows=8, quiet=True, resume=True)
    refused = runner.invoke(app, ["score", str(exports), "-o", str(out), "--model", str(binary_model)])
    assert refused.exit_code == 2 and "--resume" in error_lines(refused.output)[0]
    summary = score_file(exports, out, model=str(binary_model), chunk_rows=8, quiet=True, resume=True)
    assert summary.rows == 93 and summary.resumed_rows == 16  # two chunks of the first file were committed
    for name in ["2026-11-26/part-000.csv", "part-000.csv", "part-001.csv"]:
        assert (out / name).read_bytes() == (reference / name).read_bytes()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{tmp}/empty"], "no CSV, TSV, JSON Lines or Parquet files in this folder"),
        (["{tmp}/exports/*.tsv"], "matches no files"),
        (["{tmp}/mixed"], "mixes csv and parquet files"),
        (["{tmp}/exports", "-o", "{tmp}/exports/scored"], "inside the input folder"),
        (["{tmp}/exports", "-o", "{tmp}/exports"], "inside the input folder"),
        (["{tmp}/exports", "-o", "{tmp}/a-file.csv"], "is not a folder"),
    ],
)
def test_bad_folder_runs_are_one_line_and_exit_2(exports, tmp_path, binary_model, arguments, message):
    (tmp_path / "empty").mkdir()
    write_csv(tmp_path / "mixed" / "a.csv", ["x"])
    pq.write_table(pa.table({"text": ["y"]}), tmp_path / "mixed" / "b.parquet")
    (tmp_path / "a-file.csv").write_text("id,text\n")
    filled = [a.format(tmp=tmp_path) for a in arguments]
    result = runner.invoke(app, ["score", *filled, "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 2, result.output
    assert len(error_lines(result.output)) == 1 and message in error_lines(result.output)[0], result.output


JSONL_ROWS = [
    '{"id": 1,   "text": "great app", "meta": {"a": [1, 2.50, null], "b": {}}, "ok": true }',
    '{"text": "awful, just awful", "id": 2, "tiny": 1e-7, "big": 12345678901234567890, "neg": -0.0}',
    '{"id": 3, "text": null, "tags": []}',
    '{"id": 4}',
    '{"text": "caf\\u00e9 \u2615 \\"quoted\\"", "n": 1.0}',
    "{}",
]


def test_json_lines_keep_every_key_and_value_and_add_the_predictions_at_the_end(tmp_path, binary_model):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(JSONL_ROWS[:-1]) + "\n\n", encoding="utf-8")
    summary = score_file(source, tmp_path / "out.jsonl", model=str(binary_model), all_scores=True, quiet=True)
    assert (summary.rows, summary.scored, summary.empty) == (5, 3, 2)
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5
    names = ["sentiment_label", "sentiment_score", "sentiment_score_NEGATIVE", "sentiment_score_POSITIVE"]
    for original, line in zip(JSONL_ROWS, lines, strict=False):
        before, after = json.loads(original), json.loads(line)
        assert list(after)[: len(before)] == list(before) and list(after)[len(before) :] == names
        assert {k: after[k] for k in before} == before  # same values and types, nested ones included
        assert line.startswith(original.rstrip()[:-1].rstrip())  # the original text, byte for byte
    scored = [json.loads(line) for line in lines]
    assert [row["sentiment_label"] is None for row in scored] == [False, False, True, True, False]
    assert isinstance(scored[0]["sentiment_score"], float)
    plain = score_file(
        _as_csv(tmp_path, JSONL_ROWS[:-1]),
        tmp_path / "plain.parquet",
        model=str(binary_model),
        all_scores=True,
        quiet=True,
    )
    assert plain.label_counts == summary.label_counts
    table = pq.read_table(tmp_path / "plain.parquet")
    for row, name in [(0, "sentiment_score"), (4, "sentiment_score_POSITIVE")]:
        assert pa.scalar(scored[row][name], pa.float32()).as_py() == table[name][row].as_py()


def _as_csv(tmp_path: Path, rows: list[str]) -> Path:
    texts = [json.loads(r).get("text") for r in rows]
    table = pa.table({"text": pa.array(texts, pa.string())})
    pq.write_table(table, tmp_path / "same.parquet")
    return tmp_path / "same.parquet"


@pytest.mark.parametrize(
    ("lines", "message", "code"),
    [
        (['{"text": "a"}', "[1, 2]"], "line 2: not a JSON object but list", 2),
        (['{"text": "a"}', '{"text": "b"'], "line 2: not valid JSON", 2),
        (['{"text": "a"}', '{"text": 5}'], "line 2: 'text' holds a number, not text", 2),
        (['{"body": "a"}'], "line 1: no key 'text'; the object has 'body'", 2),
        (['{"text": "a", "sentiment_label": "x"}'], "line 1: already has key(s) 'sentiment_label'", 2),
    ],
)
def test_bad_json_lines_name_their_line(tmp_path, binary_model, lines, message, code):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["score", str(source), "--model", str(binary_model)])
    assert result.exit_code == code and message in error_lines(result.output)[0], result.output
    assert not (tmp_path / "in.scored.jsonl").exists()


def test_a_bad_json_line_deep_in_the_file_is_exit_1_with_progress_kept(tmp_path, binary_model):
    source = tmp_path / "in.ndjson"
    good = [json.dumps({"text": t}) for t in varied_texts(60, seed=2, longest_words=20)]
    source.write_text("\n".join([*good, "not json"]) + "\n")
    result = runner.invoke(app, ["score", str(source), "--model", str(binary_model), "--chunk-rows", "20"])
    assert result.exit_code == 1, result.output
    assert "line 61: not valid JSON" in error_lines(result.output)[0] and "--resume" in result.output


def test_json_lines_only_go_to_json_lines(tmp_path, binary_model):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a"}\n')
    result = runner.invoke(app, ["score", str(source), "-o", str(tmp_path / "out.csv"), "--model", str(binary_model)])
    assert result.exit_code == 2 and "JSON Lines input is written as JSON Lines" in result.output


@pytest.mark.parametrize("suffix", [".csv.gz", ".tsv.bz2", ".jsonl.zst", ".jsonl.gz"])
def test_compressed_inputs_score_like_the_plain_file(tmp_path, binary_model, suffix):
    texts = varied_texts(50, seed=4, longest_words=30)
    file_suffix, codec = suffix.rsplit(".", 1)
    if file_suffix == ".jsonl":
        plain_bytes = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)).encode()
    else:
        delimiter, quote = ("\t", "") if file_suffix == ".tsv" else (",", '"')
        rows = "".join(f"{i}{delimiter}{quote}{t}{quote}\n" for i, t in enumerate(texts))
        plain_bytes = (f"id{delimiter}text\n" + rows).encode()
    plain = tmp_path / f"plain{file_suffix}"
    plain.write_bytes(plain_bytes)
    compressed = tmp_path / f"packed{suffix}"
    if codec == "gz":
        compressed.write_bytes(gzip.compress(plain_bytes))
    elif codec == "bz2":
        compressed.write_bytes(bz2.compress(plain_bytes))
    else:
        with pa.output_stream(str(compressed), compression="zstd") as stream:
            stream.write(plain_bytes)
    score_file(plain, None, model=str(binary_model), quiet=True)
    summary = score_file(compressed, None, model=str(binary_model), quiet=True)
    assert summary.output.name == f"packed.scored{suffix}"  # compressed the same way
    with pa.input_stream(str(summary.output), compression="detect") as stream:
        unpacked = stream.read()
    scored_plain = plain.with_name(f"plain.scored{plain.suffix}").read_bytes()
    assert unpacked == scored_plain


def test_a_truncated_gzip_is_one_line(tmp_path, binary_model):
    packed = gzip.compress(("id,text\n" + "".join(f"{i},some text {i}\n" for i in range(3000))).encode())
    (tmp_path / "cut.csv.gz").write_bytes(packed[: len(packed) // 2])
    result = runner.invoke(app, ["score", str(tmp_path / "cut.csv.gz"), "--model", str(binary_model)])
    assert result.exit_code in (1, 2) and len(error_lines(result.output)) == 1, result.output
    assert "cut.csv.gz" in error_lines(result.output)[0]
    assert not (tmp_path / "cut.scored.csv.gz").exists()
