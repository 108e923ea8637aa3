"""The core job API as every face gets it: one writer per output, manifest and report failures,
progress that moves inside a chunk, stop callbacks, and the summary's rates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_corpus
from typer.testing import CliRunner

from batchsent import ExitCode, Interrupted, JobConfig, run, score_file
from batchsent.cli import app
from batchsent.state.checkpoint import Checkpoint
from batchsent.state.lock import lock_path

runner = CliRunner()


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "reviews.csv", 300, seed=31, longest_words=80)


def score(*args: object):
    return runner.invoke(app, ["score", *map(str, args)])


@pytest.fixture
def lock_holder(tmp_path):
    """Start another process holding the lock of tmp_path/out.csv, as a running batchsent would."""
    output = tmp_path / "out.csv"
    code = (
        "import sys; from pathlib import Path; from batchsent.state.lock import OutputLock\n"
        f"with OutputLock(Path({str(output)!r})):\n    print('locked', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    yield output, holder
    if holder.poll() is None:
        holder.kill()
    holder.wait()


def test_a_second_run_on_a_locked_output_stops_at_once_and_touches_nothing(corpus, binary_model, lock_holder):
    output, holder = lock_holder
    progress = Checkpoint(output)
    progress.directory.mkdir()
    (progress.directory / "part-00000001.arrow").write_bytes(b"the first run's committed rows")
    for extra in ([], ["--overwrite"], ["--resume"]):
        result = score(corpus, "--model", binary_model, "-o", output, *extra)
        assert result.exit_code == 2, result.stderr
        assert result.stderr == (
            f"error: {output}: another batchsent run (pid {holder.pid}) is writing this output; "
            "wait for it to finish or choose another --output\n"
        )
    assert (progress.directory / "part-00000001.arrow").read_bytes() == b"the first run's committed rows"
    assert not output.exists()


def test_the_lock_of_a_killed_run_is_free_again(corpus, binary_model, lock_holder):
    output, holder = lock_holder
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock_path(output).exists()  # left behind by kill -9, but no longer held
    result = score(corpus, "--model", binary_model, "-o", output, "-q")
    assert result.exit_code == 0, result.stderr
    assert output.exists() and not lock_path(output).exists()


def test_an_unwritable_manifest_is_exit_1_with_the_output_published(corpus, binary_model, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    output = tmp_path / "o.csv"
    result = score(corpus, "--model", binary_model, "-o", output, "-q", "--manifest", tmp_path / "a-file" / "m.json")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("done: 300 rows")
    assert lines[1].startswith("error: cannot write the manifest") and f"the output {output} is complete" in lines[1]
    assert output.read_text().count("\n") == 301


def test_an_unwritable_report_is_exit_1_with_the_output_published(corpus, binary_model, tmp_path, monkeypatch):
    import batchsent.report.page
    from batchsent.errors import OutputError

    def disk_full(*args, **kwargs):  # a failure no check before the run can foresee (a folder there is refused first)
        raise OutputError("No space left on device")

    monkeypatch.setattr(batchsent.report.page, "build_report", disk_full)
    report = tmp_path / "r.html"
    result = score(corpus, "--model", binary_model, "-o", tmp_path / "o.parquet", "-q", "--report", report)
    assert result.exit_code == 1
    assert "error: cannot write the report" in result.stderr and "is complete and published" in result.stderr
    assert (tmp_path / "o.parquet").exists()


def test_progress_moves_inside_one_chunk(corpus, binary_model, tmp_path, monkeypatch):
    import batchsent.cli.progress as progress

    # 300 rows are far fewer than one 4,096-row chunk: every line below comes from model batches
    monkeypatch.setattr(progress, "LOG_INTERVAL_SECONDS", 0.0)
    result = score(corpus, "--model", binary_model, "-o", tmp_path / "o.csv", "--token-budget", "256")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert " note: model loaded in " in lines[0]
    rows = [
        int(line.split(" progress: ")[1].split(" rows")[0].replace(",", "")) for line in lines if " progress: " in line
    ]
    assert len(set(rows)) >= 3 and rows == sorted(rows) and 0 < rows[0] < 300 and rows[-1] == 300
    assert all("rows/s" in line and "s left" in line for line in lines if " progress: " in line)


def test_the_first_progress_line_comes_with_the_first_batch(corpus, binary_model, tmp_path):
    result = score(corpus, "--model", binary_model, "-o", tmp_path / "o.csv", "--log-format", "json")
    events = [json.loads(line) for line in result.stderr.strip().splitlines()]
    assert [e["level"] for e in events][:2] == ["note", "progress"]  # 10-second interval, yet a line at once
    assert 0 < events[1]["rows"] < 300 and events[1]["eta_seconds"] is not None
    assert events[-1]["level"] == "summary" and events[-1]["load_seconds"] > 0


@pytest.mark.parametrize(
    ("elapsed", "load", "resumed", "said"),
    [
        (3.0, 1.0, 0, "scoring 2.0 s at 50 rows/s)"),
        (401.0, 1.0, 0, "scoring 400.0 s at 0.2 rows/s)"),  # a slow run still says its rate
        (1.0, 1.0, 0, "scoring 0.0 s)"),  # no measurable scoring time: no "0 rows/s"
        (3.0, 1.0, 100, "scoring 2.0 s, resumed after 100 rows)"),  # nothing left to score after a resume
    ],
)
def test_the_summary_gives_a_rate_only_where_there_is_one(elapsed, load, resumed, said):
    from batchsent.engine.summary import RunSummary

    line = RunSummary("in.csv", "out.csv", 100, 100, 0, 0, elapsed, load_seconds=load, resumed_rows=resumed).line()
    assert said in line and " at 0 rows/s" not in line


def test_the_python_api_gets_the_whole_job(corpus, binary_model, tmp_path):
    manifest, report = tmp_path / "m.json", tmp_path / "r.html"
    summary = score_file(corpus, tmp_path / "o.csv", model=str(binary_model), manifest=manifest, report=report)
    assert summary.rows == 300 and summary.load_seconds > 0 and summary.rows_per_second > 0
    assert "model load" in summary.line() and summary.where == "cpu, float32"
    facts = json.loads(manifest.read_text())
    assert facts["exit_status"] == 0 and facts["rows_total"] == 300 and facts["engine"] == "local"
    assert facts["load_seconds"] > 0 and facts["variant"] == "float32"
    assert "<html" in report.read_text()

    stopped = JobConfig(input=corpus, output=tmp_path / "stopped.csv", model=str(binary_model), manifest=manifest)
    with pytest.raises(Interrupted) as caught:
        run(stopped, stop=lambda: True)
    assert caught.value.exit_code == ExitCode.INTERRUPTED and "interrupted by a stop request" in str(caught.value)
    assert json.loads(manifest.read_text())["exit_status"] == 130
    assert not (tmp_path / "stopped.csv").exists()


def test_a_model_failure_is_a_scoring_error_with_its_cause(corpus, binary_model, tmp_path, monkeypatch):
    from conftest import fail_third_chunk

    from batchsent import ScoringError

    fail_third_chunk(monkeypatch, "CUDA error: an illegal memory access")
    config = JobConfig(input=corpus, output=tmp_path / "o.csv", model=str(binary_model), chunk_rows=50)
    with pytest.raises(ScoringError, match="the model failed: RuntimeError: CUDA error") as caught:
        run(config)
    assert caught.value.exit_code == ExitCode.FAILED and "100 rows are committed" in str(caught.value)


def test_exit_codes_are_one_enum():
    from batchsent.errors import InputError, OutputError, ScoringError, UsageError

    assert [int(code) for code in ExitCode] == [0, 1, 2, 130, 143]
    assert {UsageError.exit_code, InputError.exit_code, OutputError.exit_code} == {ExitCode.USAGE}
    assert ScoringError.exit_code == ExitCode.FAILED
    assert Interrupted("x", signal.SIGTERM).exit_code == 143 and Interrupted("x", signal.SIGINT).exit_code == 130
