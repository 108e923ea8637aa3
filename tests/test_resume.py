"""Nightly-run safety: kill at any instant, resume, refuse changed inputs, manifest, logs."""

from __future__ import annotations

import errno
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_corpus
from typer.testing import CliRunner

from batchsent.cli import app
from batchsent.state.checkpoint import Checkpoint

runner = CliRunner()


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "reviews.csv", 1200, seed=21, longest_words=60)


def command(source: Path, model: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "batchsent",
        "score",
        str(source),
        "--model",
        str(model),
        "-o",
        str(output),
        "--chunk-rows",
        "50",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "-q",
        *extra,
    ]


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_gives_identical_output(corpus, binary_model, tmp_path):
    reference = tmp_path / "reference.parquet"
    subprocess.run(command(corpus, binary_model, reference), check=True, capture_output=True)
    resumed_runs = 0
    for seed in range(3):
        rng = random.Random(seed)
        target = rng.randint(1, 22)  # of 24 chunks: kill once this many are committed, plus a random moment
        output = tmp_path / f"resumed-{seed}.parquet"
        process = subprocess.Popen(command(corpus, binary_model, output), stderr=subprocess.DEVNULL)
        progress = Checkpoint(output)
        deadline = time.monotonic() + 120
        while len(list(progress.directory.glob("part-*"))) < target and time.monotonic() < deadline:
            if process.poll() is not None:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if output.exists():  # killed after the final rename: the output is already complete
            assert output.read_bytes() == reference.read_bytes()
            if not progress.exists():
                continue
        manifest = tmp_path / f"manifest-{seed}.json"
        resumed = subprocess.run(
            command(corpus, binary_model, output, "--resume", "--manifest", str(manifest)),
            capture_output=True,
            text=True,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert output.read_bytes() == reference.read_bytes()
        facts = json.loads(manifest.read_text())
        assert facts["rows_total"] == 1200 and facts["rows_resumed_from"] % 50 == 0
        resumed_runs += facts["rows_resumed_from"] > 0
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert resumed_runs >= 2  # the kills landed mid-run, and the resumed runs skipped committed rows


@pytest.mark.slow
def test_sigterm_commits_and_exits_143_with_the_resume_hint(corpus, binary_model, tmp_path):
    output = tmp_path / "out.csv"
    process = subprocess.Popen(command(corpus, binary_model, output), stderr=subprocess.PIPE, text=True)
    progress = Checkpoint(output)
    deadline = time.monotonic() + 60
    while not list(progress.directory.glob("part-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr and "run the same command with --resume to continue" in stderr
    assert not output.exists() and progress.exists()
    finished = subprocess.run(command(corpus, binary_model, output, "--resume"), capture_output=True, text=True)
    assert finished.returncode == 0 and output.exists() and not progress.directory.exists()


@pytest.fixture
def interrupted_run(corpus, binary_model, monkeypatch, tmp_path):
    """An in-process run that failed after committing 2 chunks."""
    from conftest import fail_third_chunk

    fail_third_chunk(monkeypatch, "node rebooted")
    output = tmp_path / "out.parquet"
    args = ["score", str(corpus), "--model", str(binary_model), "-o", str(output), "--chunk-rows", "50"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "100 rows are committed" in result.stderr
    monkeypatch.undo()  # later runs score normally
    return args, output


def test_state_without_resume_says_what_to_do(interrupted_run):
    args, output = interrupted_run
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "left 100 committed rows" in result.stderr and "pass --resume to continue it or --overwrite" in result.stderr
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert output.exists() and not Checkpoint(output).directory.exists()


@pytest.mark.parametrize(
    ("change", "named"),
    [("input", "input.size"), ("option", "options.max_length"), ("model", "model.")],
)
def test_resume_refuses_a_changed_input_model_or_option(interrupted_run, tiny_models, change, named):
    args, output = interrupted_run
    source = Path(args[1])
    if change == "input":
        with open(source, "a") as stream:
            stream.write('9999,"one more row"\n')
    elif change == "option":
        args = [*args, "--max-length", "128"]
    else:
        args[args.index("--model") + 1] = str(tiny_models["three"])
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if " note: model loaded" not in line]
    assert len(lines) == 1 and "cannot resume:" in lines[0] and named in lines[0]
    assert Checkpoint(output).exists()


def test_a_write_failure_keeps_progress_and_resume_finishes(corpus, binary_model, tmp_path, monkeypatch):
    original, calls = Checkpoint.commit, {"n": 0}

    def disk_full(self, state, batch, counts):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, state, batch, counts)

    monkeypatch.setattr(Checkpoint, "commit", disk_full)
    output = tmp_path / "out.csv"
    args = ["score", str(corpus), "--model", str(binary_model), "-o", str(output), "--chunk-rows", "100"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "No space left on device" in result.stderr and "300 rows are committed" in result.stderr
    assert not output.exists()
    monkeypatch.setattr(Checkpoint, "commit", original)
    manifest = tmp_path / "m.json"
    assert runner.invoke(app, [*args, "--resume", "--manifest", str(manifest)]).exit_code == 0
    assert json.loads(manifest.read_text())["rows_resumed_from"] == 300
    assert output.read_text().count("\n") > 1200


def test_manifest_fields(corpus, binary_model, tmp_path):
    manifest = tmp_path / "run.json"
    result = runner.invoke(
        app,
        [
            "score",
            str(corpus),
            "--model",
            str(binary_model),
            "-o",
            str(tmp_path / "o.parquet"),
            "--manifest",
            str(manifest),
            "--all-scores",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.stderr
    facts = json.loads(manifest.read_text())
    assert facts["input"]["path"] == str(corpus.resolve()) and facts["input"]["size"] == corpus.stat().st_size
    assert facts["input"]["mtime"]
    assert (facts["rows_total"], facts["scored"], facts["empty"]) == (1200, 1200, 0)
    assert facts["truncated"] == 0 and sum(facts["label_counts"].values()) == 1200
    assert facts["model"]["local_path"] == str(binary_model.resolve())
    assert facts["model"]["labels"] == {"0": "NEGATIVE", "1": "POSITIVE"}
    assert facts["options"]["all_scores"] is True and facts["options"]["column"] == "text"
    assert set(facts["versions"]) >= {"batchsent", "transformers", "torch", "tokenizers", "pyarrow"}
    assert facts["device"] == "cpu" and facts["dtype"] == "float32"
    assert facts["started"] <= facts["ended"] and facts["elapsed_seconds"] > 0 and facts["rows_per_second"] > 0
    assert facts["exit_status"] == 0 and facts["error"] is None


def test_manifest_is_written_when_the_run_fails(tmp_path, binary_model):
    manifest = tmp_path / "run.json"
    source = tmp_path / "in.csv"
    source.write_text("text\nfine\n")
    result = runner.invoke(
        app, ["score", str(source), "-c", "body", "--model", str(binary_model), "--manifest", str(manifest)]
    )
    assert result.exit_code == 2
    facts = json.loads(manifest.read_text())
    assert facts["exit_status"] == 2 and "no column 'body'" in facts["error"]


def test_json_logs_are_one_object_per_line(corpus, binary_model, tmp_path):
    result = runner.invoke(
        app, ["score", str(corpus), "--model", str(binary_model), "-o", str(tmp_path / "o.csv"), "--log-format", "json"]
    )
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.strip().splitlines()]
    assert events[-1]["level"] == "summary" and events[-1]["rows"] == 1200
    failed = runner.invoke(app, ["score", str(tmp_path / "missing.csv"), "--log-format", "json"])
    (event,) = [json.loads(line) for line in failed.stderr.strip().splitlines()]
    assert failed.exit_code == 2 and event["level"] == "error" and "no such file" in event["message"]


def test_cron_progress_lines_are_timestamped(binary_model, tmp_path, corpus, monkeypatch):
    import batchsent.cli.progress as progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_SECONDS", 0.0)
    result = runner.invoke(
        app, ["score", str(corpus), "--model", str(binary_model), "-o", str(tmp_path / "o.csv"), "--chunk-rows", "300"]
    )
    lines = result.stderr.strip().splitlines()
    assert any(" progress: " in line and line[:4].isdigit() for line in lines[:-1])
    assert lines[-1].startswith("done: 1,200 rows")


def test_a_bad_row_deep_in_the_file_is_exit_1_with_its_line(tmp_path, binary_model):
    source = tmp_path / "big.csv"
    good = "".join(f"{i},a short and plain review number {i}\n" for i in range(30_000))
    source.write_text("id,text\n" + good + "30000,one,field,too many\n")
    assert source.stat().st_size > 1 << 20  # past the reader's first block
    result = runner.invoke(app, ["score", str(source), "--model", str(binary_model), "-o", str(tmp_path / "o.csv")])
    assert result.exit_code == 1, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "big.csv: line 30002: expected 2 fields, got 4" in message and "rows are committed" in message
    assert not (tmp_path / "o.csv").exists() and Checkpoint(tmp_path / "o.csv").exists()
