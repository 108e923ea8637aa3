"""--engine ray: row-level equality with the local engine, same bad-input messages."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from batchsent.cli import app

pytestmark = pytest.mark.ray
runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def two_files(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    lines = (SAMPLE / "reviews.csv").read_text().splitlines(keepends=True)
    (folder / "part-1.csv").write_text("".join(lines[:25]))
    (folder / "part-2.csv").write_text(lines[0] + "".join(lines[25:]))
    return folder


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


@needs_ray
def test_ray_rows_equal_the_local_engine(two_files, binary_model, tmp_path, local_ray):
    expected = []
    for source in sorted(two_files.iterdir()):
        target = tmp_path / f"{source.stem}.local.csv"
        assert (
            runner.invoke(app, ["score", str(source), "--model", str(binary_model), "-o", str(target)]).exit_code == 0
        )
        expected += read_rows(target)
    output, manifest, report = tmp_path / "scored", tmp_path / "run.json", tmp_path / "report.html"
    result = runner.invoke(
        app,
        [
            "score",
            str(two_files),
            "--engine",
            "ray",
            "--workers",
            "2",
            "--model",
            str(binary_model),
            "-o",
            str(output),
            "--all-scores",
            "-q",
            "--manifest",
            str(manifest),
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert "done: 42 rows: 40 scored, 2 empty, 0 truncated" in result.stderr
    facts = json.loads(manifest.read_text())  # the same core writes the manifest and report for Ray
    assert (facts["engine"], facts["rows_total"], facts["exit_status"]) == ("ray", 42, 0)
    assert facts["output"] == str(output.resolve()) and sum(facts["label_counts"].values()) == 40
    assert "42" in report.read_text() and "<html" in report.read_text()
    assert sorted(p.name for p in output.iterdir()) == ["part-1.csv", "part-2.csv"]  # one output per input, its name
    got = read_rows(output / "part-1.csv") + read_rows(output / "part-2.csv")
    assert [{k: r[k] for k in ("id", "product", "region", "rating", "text")} for r in got] == [
        {k: r[k] for k in ("id", "product", "region", "rating", "text")} for r in expected
    ]
    assert_same_predictions(got, expected, "sentiment_")


def assert_same_predictions(got: list[dict], expected: list[dict], prefix: str) -> None:
    """Labels equal, scores within 1e-5 (rows batched with other rows move in the last bits)."""
    assert [r[f"{prefix}label"] for r in got] == [r[f"{prefix}label"] for r in expected]
    ours = np.array([float(r[f"{prefix}score"]) if r[f"{prefix}score"] else np.nan for r in got])
    theirs = np.array([float(r[f"{prefix}score"]) if r[f"{prefix}score"] else np.nan for r in expected])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@needs_ray
def test_a_bad_column_is_reported_as_by_the_local_engine(two_files, binary_model):
    result = runner.invoke(
        app, ["score", str(two_files), "--engine", "ray", "-c", "body", "--model", str(binary_model)]
    )
    assert result.exit_code == 2
    assert "part-1.csv: no column 'body'; the file has 'id', 'product', 'region', 'rating', 'text'" in result.stderr
    empty = two_files.parent / "nothing"
    empty.mkdir()
    result = runner.invoke(app, ["score", str(empty), "--engine", "ray", "--model", str(binary_model)])
    assert result.exit_code == 2 and "no CSV, TSV, JSON Lines or Parquet files in this folder" in result.stderr


def test_missing_extra_says_what_to_install(two_files, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("ray") else real(name, *a)
    )
    result = runner.invoke(app, ["score", str(two_files), "--engine", "ray"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --engine ray needs Ray Data: pip install 'batchsent[ray]'"


def test_ray_only_options_need_the_ray_engine(two_files):
    result = runner.invoke(app, ["score", str(two_files / "part-1.csv"), "--workers", "2"])
    assert result.exit_code == 2 and "need --engine ray" in result.stderr


@needs_ray
def test_ray_scores_several_models_as_the_local_engine(two_files, tiny_models, tmp_path, local_ray):
    models = [f"--model=sentiment={tiny_models['binary']}", f"--model=stars={tiny_models['three']}"]
    local = tmp_path / "local"
    assert runner.invoke(app, ["score", str(two_files), *models, "-o", str(local), "-q"]).exit_code == 0
    expected = read_rows(local / "part-1.csv") + read_rows(local / "part-2.csv")
    output, manifest = tmp_path / "scored", tmp_path / "run.json"
    result = runner.invoke(
        app, ["score", str(two_files), "--engine", "ray", *models, "-o", str(output), "-q", "--manifest", str(manifest)]
    )
    assert result.exit_code == 0, result.stderr
    assert "done: 42 rows: 40 scored, 2 empty by 2 models" in result.stderr and "; stars: negative" in result.stderr
    got = read_rows(output / "part-1.csv") + read_rows(output / "part-2.csv")
    for prefix in ("sentiment_", "stars_"):
        assert_same_predictions(got, expected, prefix)
    facts = json.loads(manifest.read_text())
    assert [entry["name"] for entry in facts["models"]] == ["sentiment", "stars"]
    assert sum(facts["models"][1]["label_counts"].values()) == 40


@needs_ray
def test_ray_refuses_colliding_model_columns_before_it_starts(two_files, tiny_models, tmp_path):
    from conftest import relabelled

    labelled = relabelled(tiny_models["binary"], tmp_path / "labelled", ["label", "other"])
    result = runner.invoke(
        app,
        [
            "score",
            str(two_files),
            "--engine",
            "ray",
            f"--model=a={labelled}",
            f"--model=a_score={tiny_models['three']}",
            "--all-scores",
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "models a and a_score would both write the column 'a_score_label'" in result.stderr
    assert not (tmp_path / "o").exists()


@needs_ray
def test_rays_path_listing_can_import_fsspecs_http_filesystem():
    """Ray Data asks, from several threads, whether each listed path is on fsspec's HTTP filesystem. Without
    aiohttp (part of batchsent[ray]) that import fails half-way, and a plain local folder run failed at random
    with "cannot import name 'HTTPFileSystem'"."""
    from concurrent.futures import ThreadPoolExecutor

    import fsspec.implementations.http  # noqa: F401 - the import that failed
    from pyarrow.fs import LocalFileSystem
    from ray.data.datasource.path_util import _is_http_filesystem

    with ThreadPoolExecutor(8) as pool:
        assert not any(pool.map(lambda _: _is_http_filesystem(LocalFileSystem()), range(64)))


@needs_ray
@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_unreachable_ray_address_is_one_line_and_no_hang(tmp_path, scheme):
    import socket
    import time

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = runner.invoke(
        app,
        [
            "score",
            str(SAMPLE / "reviews.csv"),
            "--engine",
            "ray",
            "-o",
            str(tmp_path / "out"),
            "--ray-address",
            f"{scheme}127.0.0.1:{port}",
            "--model",
            str(SAMPLE),
        ],
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach the Ray cluster" in errors[0], result.output
    assert time.monotonic() - started < 60  # a bound on a hang, not a timing: Ray alone retries for minutes
    assert not (tmp_path / "out").exists()


@needs_ray
def test_a_model_the_workers_cannot_load_is_one_line_naming_the_node(two_files, binary_model, tmp_path, local_ray):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(binary_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # the config reads fine on the driver; the weights do not load
    output = tmp_path / "scored"
    result = runner.invoke(app, ["score", str(two_files), "--engine", "ray", "--model", str(broken), "-o", str(output)])
    assert result.exit_code == 2, result.stderr
    assert (
        result.stderr.count("\n") == 1
        and "error: Ray node " in result.stderr
        and "cannot load the model" in result.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "in"]  # no output, no progress left to resume


@needs_ray
def test_an_output_another_run_is_writing_is_refused_before_ray_starts(two_files, binary_model, tmp_path):
    from batchsent.state.lock import OutputLock

    output = tmp_path / "scored"
    with OutputLock(output):
        result = runner.invoke(
            app, ["score", str(two_files), "--engine", "ray", "--model", str(binary_model), "-o", str(output)]
        )
    assert result.exit_code == 2 and "another batchsent run" in result.stderr and result.stderr.count("\n") == 1
    assert not output.exists()


@needs_ray
def test_ray_scores_text_pairs_as_the_local_engine(tmp_path, tiny_models, local_ray):
    from conftest import varied_texts

    folder = tmp_path / "faq"
    folder.mkdir()
    questions, answers = varied_texts(30, seed=11, longest_words=40), varied_texts(30, seed=12, longest_words=40)
    answers[4] = ""  # a blank pair: an empty row
    with open(folder / "faq.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["id", "question", "answer"])
        writer.writerows((i, q, a) for i, (q, a) in enumerate(zip(questions, answers)))
    options = ["-c", "question", "--pair-column", "answer", "--model", str(tiny_models["three"]), "-q"]
    local = tmp_path / "local.csv"
    assert runner.invoke(app, ["score", str(folder / "faq.csv"), *options, "-o", str(local)]).exit_code == 0
    result = runner.invoke(app, ["score", str(folder), "--engine", "ray", *options, "-o", str(tmp_path / "ray")])
    assert result.exit_code == 0, result.stderr
    assert "done: 30 rows: 29 scored, 1 empty" in result.stderr
    assert_same_predictions(read_rows(tmp_path / "ray" / "faq.csv"), read_rows(local), "sentiment_")
    result = runner.invoke(
        app,
        [
            "score",
            str(folder),
            "--engine",
            "ray",
            "-c",
            "question",
            "--pair-column",
            "missing",
            "--model",
            str(tiny_models["three"]),
            "-o",
            str(tmp_path / "bad"),
        ],
    )
    assert result.exit_code == 2 and "no column 'missing'" in result.stderr and not (tmp_path / "bad").exists()


@needs_ray
def test_json_lines_keys_named_like_output_columns_are_refused_as_by_the_local_engine(
    tmp_path, binary_model, local_ray
):
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "text": "a fine film"}) for i in range(8)]
    lines[5] = json.dumps({"id": 5, "text": "bad", "sentiment_score_POSITIVE": 1})
    source.write_text("\n".join(lines) + "\n")
    outcomes = []
    for engine in ("local", "ray"):
        result = runner.invoke(
            app,
            [
                "score",
                str(source),
                "--engine",
                engine,
                "--model",
                str(binary_model),
                "--all-scores",
                "-o",
                str(tmp_path / f"out-{engine}.jsonl"),
            ],
        )
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        outcomes.append((result.exit_code, errors))
    assert outcomes[0] == outcomes[1], outcomes
    assert outcomes[0][0] == 2 and "line 6" in outcomes[0][1][0] and "sentiment_score_POSITIVE" in outcomes[0][1][0]


@needs_ray
def test_a_header_only_file_in_a_folder_gets_the_prediction_columns_on_both_engines(tmp_path, binary_model, local_ray):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text("id,text\n1,fine\n2,good\n")
    (folder / "b.csv").write_text("id,text\n")
    for engine in ("local", "ray"):
        result = runner.invoke(
            app,
            [
                "score",
                str(folder),
                "--engine",
                engine,
                "--model",
                str(binary_model),
                "-o",
                str(tmp_path / f"out-{engine}"),
            ],
        )
        assert result.exit_code == 0, result.stderr
        assert (tmp_path / f"out-{engine}" / "b.csv").read_text() == '"id","text","sentiment_label","sentiment_score"\n'
        assert (tmp_path / f"out-{engine}").stat().st_mode & 0o777 == 0o777 & ~_umask()  # as mkdir makes it


def _umask() -> int:
    import os

    current = os.umask(0)
    os.umask(current)
    return current


@needs_ray
def test_one_file_is_named_as_the_local_engine_names_it(tmp_path, binary_model, local_ray, monkeypatch):
    source = tmp_path / "r.csv"
    source.write_text((SAMPLE / "reviews.csv").read_text())
    monkeypatch.chdir(tmp_path)
    for engine, output in (("local", "local.csv"), ("ray", "out.csv")):
        result = runner.invoke(app, ["score", "r.csv", "--engine", engine, "--model", str(binary_model), "-o", output])
        assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out.csv").is_file()  # a file, not a folder out.csv/r.csv
    assert_same_predictions(read_rows(tmp_path / "out.csv"), read_rows(tmp_path / "local.csv"), "sentiment_")
    result = runner.invoke(app, ["score", "r.csv", "--engine", "ray", "--model", str(binary_model)])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "r.scored.csv").is_file()  # the local engine's default name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.csv", "out.csv", "r.csv", "r.scored.csv"]


@needs_ray
def test_a_bad_json_line_deep_in_a_file_is_named_as_by_the_local_engine(tmp_path, binary_model, local_ray):
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "text": "nice"}) for i in range(400)]
    lines[300] = '{"id": 300, "text": "broken'
    source.write_text("\n".join(lines) + "\n")
    result = runner.invoke(
        app, ["score", str(source), "--engine", "ray", "--model", str(binary_model), "-o", str(tmp_path / "out.jsonl")]
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "line 301: not valid JSON" in errors[0] and "ray::" not in errors[0], result.stderr


@needs_ray
def test_a_ray_run_records_and_orders_what_the_local_engine_does(two_files, tiny_models, tmp_path, local_ray):
    model = tiny_models["multi"]  # labels joy, anger, surprise: not in alphabetical order
    lines, facts = {}, {}
    for engine in ("local", "ray"):
        manifest = tmp_path / f"{engine}.json"
        result = runner.invoke(
            app,
            [
                "score",
                str(two_files),
                "--engine",
                engine,
                "--model",
                str(model),
                "-o",
                str(tmp_path / f"out-{engine}"),
                "--manifest",
                str(manifest),
            ],
        )
        assert result.exit_code == 0, result.stderr
        lines[engine] = next(line for line in result.stderr.splitlines() if line.startswith("done:"))
        facts[engine] = json.loads(manifest.read_text())
    labels = {engine: line.split("; ", 1)[1].split(" -> ")[0] for engine, line in lines.items()}
    assert labels["ray"] == labels["local"]  # the model's label order, not the alphabet
    for key in ("device", "dtype", "variant", "model", "label_counts"):
        assert facts["ray"][key] == facts["local"][key], key
    assert facts["ray"]["model"]["local_path"] == str(model.resolve()) and facts["ray"]["load_seconds"] > 0
    assert "cpu, float32]" in lines["ray"]
