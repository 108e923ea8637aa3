"""The contract of a run, checked on both engines from one suite: a rule that holds on one engine and not
the other fails here. Each test runs ``batchsent score`` in-process with ``--engine local`` and
``--engine ray`` (a 2-CPU local Ray instance shared by the module) and asserts the same outcome."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json

import pytest
from conftest import relabelled
from typer.testing import CliRunner

from batchsent.cli import app

runner = CliRunner()
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
ENGINES = [
    pytest.param("local", id="local"),
    pytest.param("ray", id="ray", marks=[pytest.mark.ray, needs_ray]),
]
ROWS = [("1", "a wonderful, moving film"), ("2", "dull and far too long"), ("3", ""), ("4", "fine")]


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_instance")
    return request.param


def score(engine: str, *args: str):
    return runner.invoke(app, ["score", *args, "--engine", engine, "-q"])


def csv_text(rows=ROWS) -> str:
    return "id,text\n" + "".join(f'{row},"{text}"\n' for row, text in rows)


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_a_compressed_file_is_named_the_same_on_both(engine, binary_model, tmp_path):
    source = tmp_path / "x.csv.gz"
    source.write_bytes(gzip.compress(csv_text().encode()))
    result = score(engine, str(source), "--model", str(binary_model))
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["x.csv.gz", "x.scored.csv.gz"]
    rows = list(csv.reader(gzip.decompress((tmp_path / "x.scored.csv.gz").read_bytes()).decode().splitlines()))
    assert rows[0] == ["id", "text", "sentiment_label", "sentiment_score"] and len(rows) == 5


def test_the_report_of_a_folder_run_counts_nested_and_compressed_outputs(engine, binary_model, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.csv").write_text(csv_text())
    (folder / "sub" / "b.csv.gz").write_bytes(gzip.compress(csv_text().encode()))
    report = tmp_path / "r.html"
    output = tmp_path / "out"
    result = score(engine, str(folder), "-o", str(output), "--model", str(binary_model), "--report", str(report))
    assert result.exit_code == 0, result.output
    assert (output / "a.csv").is_file() and (output / "sub" / "b.csv.gz").is_file()
    assert report.is_file()
    from batchsent.report.stats import ReportOptions, collect

    assert collect(output, ReportOptions()).rows == 8  # what the report reads: every output file's rows


def test_the_manifest_says_what_ran_in_the_model_label_order(engine, binary_model, tmp_path):
    model = relabelled(binary_model, tmp_path / "model", ["zeta", "alpha"])  # id2label order is not sorted
    source = tmp_path / "in.csv"
    source.write_text(csv_text())
    manifest = tmp_path / "run.json"
    result = score(engine, str(source), "--model", str(model), "--manifest", str(manifest))
    assert result.exit_code == 0, result.output
    facts = json.loads(manifest.read_text())
    assert (facts["engine"], facts["rows_total"], facts["exit_status"], facts["rows_resumed_from"]) == (
        engine,
        4,
        0,
        0,
    )
    assert facts["model"]["labels"] == {"0": "zeta", "1": "alpha"}
    assert facts["model"]["local_path"] == str(model.resolve())
    assert (facts["device"], facts["dtype"], facts["variant"]) == ("cpu", "float32", "float32")
    assert facts["load_seconds"] > 0
    assert list(facts["label_counts"]) == [label for label in ("zeta", "alpha") if label in facts["label_counts"]]


def test_a_json_lines_key_named_like_an_output_column_is_refused(engine, binary_model, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "fine", "sentiment_score": 1}\n{"text": "dull"}\n')
    line = one_error_line(score(engine, str(source), "--model", str(binary_model)), 2)
    assert "sentiment_score" in line
    assert not (tmp_path / "in.scored.jsonl").exists()


def test_a_missing_column_is_one_line_and_exit_2(engine, binary_model, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text(csv_text())
    line = one_error_line(score(engine, str(source), "--model", str(binary_model), "--column", "body"), 2)
    assert "body" in line and "text" in line  # names the column asked for and those there are
    assert not (tmp_path / "in.scored.csv").exists()


def test_an_output_over_the_input_is_refused(engine, binary_model, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text(csv_text())
    before = source.read_bytes()
    one_error_line(score(engine, str(source), "--model", str(binary_model), "-o", str(source), "--overwrite"), 2)
    assert source.read_bytes() == before
