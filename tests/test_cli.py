"""The command as a user meets it: in-process through Typer's runner, exact messages."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchsent.cli import app

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["score", *map(str, args)], env=env)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def reviews(tmp_path) -> Path:
    path = tmp_path / "reviews.csv"
    path.write_bytes((SAMPLE / "reviews.csv").read_bytes())
    return path


def test_scores_a_csv_and_keeps_every_cell(reviews, binary_model):
    result = invoke(reviews, "--model", binary_model)
    assert result.exit_code == 0, result.stderr
    output = reviews.with_name("reviews.scored.csv")
    with open(reviews, newline="") as a, open(output, newline="") as b:
        before, after = list(csv.reader(a)), list(csv.reader(b))
    assert after[0] == before[0] + ["sentiment_label", "sentiment_score"]
    assert [row[:5] for row in after] == before
    blank = [row for row in after[1:] if not row[4].strip()]
    assert len(blank) == 2 and all(row[5:] == ["", ""] for row in blank)
    assert {row[5] for row in after[1:] if row[4].strip()} <= {"NEGATIVE", "POSITIVE"}
    assert "done: 42 rows: 40 scored, 2 empty, 0 truncated" in result.stderr


def test_csv_in_parquet_out_with_all_scores(reviews, binary_model, tmp_path):
    output = tmp_path / "out.parquet"
    result = invoke(reviews, "-o", output, "--model", binary_model, "--all-scores", "--prefix", "p_")
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(output)
    assert table.column_names[-4:] == ["p_label", "p_score", "p_score_NEGATIVE", "p_score_POSITIVE"]
    assert table.schema.field("p_score").type == pa.float32()
    rows = table.to_pylist()
    for row in rows:
        if row["p_label"] is not None:
            assert row["p_score"] == max(row["p_score_NEGATIVE"], row["p_score_POSITIVE"])
            assert abs(row["p_score_NEGATIVE"] + row["p_score_POSITIVE"] - 1) < 1e-6


def test_parquet_keeps_schema_and_metadata(binary_model, tmp_path):
    output = tmp_path / "scored.parquet"
    result = invoke(SAMPLE / "reviews.parquet", "-o", output, "--model", binary_model)
    assert result.exit_code == 0, result.stderr
    source, scored = pq.read_table(SAMPLE / "reviews.parquet"), pq.read_table(output)
    assert scored.schema.metadata == source.schema.metadata
    assert scored.select(source.column_names).equals(source)


def test_sample_csv_and_parquet_hold_the_same_rows():
    with open(SAMPLE / "reviews.csv", newline="") as sample:
        rows = list(csv.DictReader(sample))
    table = pq.read_table(SAMPLE / "reviews.parquet").to_pylist()
    assert [r["text"] for r in rows] == [r["text"] for r in table]
    assert [r["id"] for r in rows] == [r["id"] for r in table]


def test_small_chunks_give_the_same_output(reviews, binary_model, tmp_path):
    one, many = tmp_path / "one.csv", tmp_path / "many.csv"
    assert invoke(reviews, "-o", one, "--model", binary_model, "--chunk-rows", "1000").exit_code == 0
    assert invoke(reviews, "-o", many, "--model", binary_model, "--chunk-rows", "3", "--batch-size", "2").exit_code == 0
    with open(one, newline="") as a, open(many, newline="") as b:
        first, second = list(csv.reader(a)), list(csv.reader(b))
    assert [row[:-1] for row in first] == [row[:-1] for row in second]
    for x, y in zip(first[1:], second[1:], strict=True):
        assert (x[-1] == y[-1] == "") or abs(float(x[-1]) - float(y[-1])) <= 1e-5


def test_config_file_and_flags_and_environment(reviews, binary_model, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(f'input = "reviews.csv"\noutput = "from-config.csv"\nmodel = "{binary_model}"\nprefix = "cfg_"\n')
    result = invoke("--config", job, "--prefix", "flag_")
    assert result.exit_code == 0, result.stderr
    header = (tmp_path / "from-config.csv").read_text().splitlines()[0]
    assert header.endswith('"flag_label","flag_score"')
    # BATCHSENT_MODEL replaces the built-in default; --model beats it.
    result = invoke(reviews, "-o", tmp_path / "env.csv", env={"BATCHSENT_MODEL": str(binary_model)})
    assert result.exit_code == 0, result.stderr
    result = invoke(
        reviews, "-o", tmp_path / "x.csv", "--model", tmp_path / "nowhere", env={"BATCHSENT_MODEL": str(binary_model)}
    )
    assert result.exit_code == 2 and "nowhere" in result.stderr


def test_shipped_nightly_config_parses():
    from batchsent.settings.jobfile import read_job_file

    options = read_job_file(Path(__file__).resolve().parents[1] / "configs" / "nightly.toml")
    assert options["column"] == "text" and options["input"].name.endswith(".csv")


def bad(result, code: int, message: str) -> None:
    """Exit ``code`` with one error line holding ``message`` (progress and notes may precede it), no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if " progress: " not in line and " note: " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(reviews, binary_model, tmp_path):
    before = digest(reviews)
    model = ["--model", binary_model]
    bad(invoke(tmp_path / "missing.csv", *model), 2, "missing.csv: no such file")
    bad(
        invoke(reviews, "-c", "review", *model),
        2,
        "no column 'review'; the file has 'id', 'product', 'region', 'rating', 'text'",
    )
    (tmp_path / "notes.txt").write_text("hello")
    bad(invoke(tmp_path / "notes.txt", *model), 2, "unsupported file type '.txt'")
    bad(invoke(reviews, "-o", tmp_path / "out.json", *model), 2, "unsupported file type '.json'")
    bad(invoke(reviews, "-o", reviews, "--overwrite", *model), 2, "a run never writes over its input")
    bad(invoke(reviews, "--batch-size", "0", *model), 2, "--batch-size must be positive")
    bad(invoke(reviews, "--max-length", "-3", *model), 2, "--max-length must be positive")
    bad(invoke(reviews, "--max-length", "4096", *model), 2, "exceeds the model's limit of 512")
    bad(invoke(reviews, "--device", "tpu", *model), 2, "--device 'tpu'")
    bad(invoke(reviews, "--dtype", "float16", "--device", "cpu", *model), 2, "--dtype float16 needs a CUDA device")
    bad(invoke(reviews, "--dtype", "fp8", *model), 2, "--dtype 'fp8'")
    bad(invoke(reviews, "--threads", "0", *model), 2, "--threads must be positive")
    bad(invoke(reviews, "--stride", "8", *model), 2, "--stride and --aggregate need --long-text chunk")
    bad(invoke(reviews, "--long-text", "chunk", "--aggregate", "vote", *model), 2, "--aggregate 'vote'")
    bad(invoke(reviews, "--long-text", "chunk", "--stride", "-1", *model), 2, "--stride must be zero or positive")
    bad(
        invoke(reviews, "--long-text", "chunk", "--stride", "64", "--max-length", "64", *model),
        2,
        "--stride 64 must be smaller than the window",
    )
    bad(invoke(reviews, "-o", tmp_path / "nodir" / "x.csv", *model), 2, "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "reviews.csv"]
    assert digest(reviews) == before


def test_threads_and_token_budget_flags_run(reviews, binary_model, tmp_path):
    result = invoke(
        reviews, "-o", tmp_path / "t.csv", "--model", binary_model, "--threads", "1", "--token-budget", "64"
    )
    assert result.exit_code == 0, result.stderr


def test_chunk_mode_adds_the_window_count(tmp_path, binary_model):
    source = tmp_path / "long.csv"
    source.write_text("text\n" + "fine words " * 400 + "\nshort\n\n")
    output = tmp_path / "long.scored.parquet"
    result = invoke(source, "-o", output, "--model", binary_model, "--long-text", "chunk", "--aggregate", "max")
    assert result.exit_code == 0, result.stderr
    assert "1 over the limit (scored in windows)" in result.stderr
    assert pq.read_table(output).column("sentiment_chunks").to_pylist() == [2, 1, None]


def test_existing_output_needs_overwrite(reviews, binary_model):
    output = reviews.with_name("reviews.scored.csv")
    output.write_text("keep me")
    bad(invoke(reviews, "--model", binary_model), 2, "already exists; pass --overwrite")
    assert output.read_text() == "keep me"
    assert invoke(reviews, "--model", binary_model, "--overwrite").exit_code == 0
    assert output.read_text() != "keep me"


def test_prediction_columns_that_already_exist_are_refused(tmp_path, binary_model):
    path = tmp_path / "in.csv"
    path.write_text("text,sentiment_label\nhi,x\n")
    bad(invoke(path, "--model", binary_model), 2, "already has column(s) 'sentiment_label'; choose another --prefix")


def test_model_problems(reviews, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    bad(
        invoke(reviews, "--model", "someone/not-cached-model"),
        2,
        "model 'someone/not-cached-model' is not in the local Hugging Face cache",
    )
    result = invoke(reviews)
    assert "distilbert-base-uncased-finetuned-sst-2-english" in result.stderr and "--model PATH" in result.stderr
    empty = tmp_path / "empty-model"
    empty.mkdir()
    bad(invoke(reviews, "--model", empty), 2, "the directory holds no model (no config.json)")
    bad(invoke(reviews, "--model", tmp_path / "no" / "such"), 2, "no such directory, and not a Hugging Face Hub id")


def test_a_base_model_without_a_classification_head_is_refused(reviews):
    from conftest import vocabulary_dir

    bad(invoke(reviews, "--model", vocabulary_dir()), 2, "has no trained classification head")


def test_bad_file_contents(tmp_path, binary_model):
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text\nfine\ncaf\xe9 au lait\n")
    bad(invoke(latin, "--model", binary_model), 2, "latin.csv: line 3: bytes that are not valid UTF-8")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    bad(invoke(broken, "--model", binary_model), 2, "broken.parquet: not a readable Parquet file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.parquet", "latin.csv"]


def test_a_failure_while_running_leaves_no_output(reviews, binary_model, monkeypatch):
    from conftest import fail_third_chunk

    fail_third_chunk(monkeypatch, "device fell over")
    result = invoke(reviews, "--model", binary_model, "--chunk-rows", "5")
    bad(
        result,
        1,
        "RuntimeError: device fell over; 10 rows are committed: run the same command with --resume once the cause is fixed",
    )
    # no output under the final name; the committed progress is kept for --resume
    assert sorted(p.name for p in reviews.parent.iterdir()) == [".reviews.scored.csv.batchsent", "reviews.csv"]
    monkeypatch.undo()  # the device is back
    result = invoke(reviews, "--model", binary_model, "--chunk-rows", "5", "--resume")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in reviews.parent.iterdir()) == ["reviews.csv", "reviews.scored.csv"]


def test_interrupt_exits_130_and_leaves_no_output(reviews, binary_model, monkeypatch):
    from batchsent.model.classifier import Classifier

    def interrupted(self, chunk, stop=None, on_batch=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(Classifier, "run", interrupted)
    bad(invoke(reviews, "--model", binary_model), 130, "interrupted")
    assert sorted(p.name for p in reviews.parent.iterdir()) == ["reviews.csv"]


def test_every_command_has_help():
    for args in (["--help"], ["score", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
        assert "Score" in result.stdout
    score_help = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--token-budget" in score_help
    assert "[default: text]" in score_help and "batchsent[onnx]" in score_help  # not eaten as markup


def test_unreachable_hub_fails_at_once_with_one_line(reviews, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    bad(invoke(reviews, "--model", "someone/not-cached-model"), 2, "cannot reach http://127.0.0.1:9")


def test_help_shows_the_defaults_jobconfig_owns():
    """Defaults are stated once (JobConfig); the help reads them from there."""
    import dataclasses

    from batchsent.settings.options import JobConfig

    shown = " ".join(runner.invoke(app, ["score", "--help"], env={"COLUMNS": "400"}).output.split())
    defaults = {field.name: field.default for field in dataclasses.fields(JobConfig)}
    for option, name in (
        ("--column", "column"),
        ("--prefix", "prefix"),
        ("--engine", "engine"),
        ("--workers", "workers"),
    ):
        after = shown.split(f" {option} ", 1)[1]
        assert after[after.index("[default: ") :].startswith(f"[default: {defaults[name]}]"), option
