"""The resume contract on both engines, from one test: a folder run killed with kill -9 mid-run refuses to
start over without --resume, refuses to resume with a changed result option, and resumes into every row
once, as an uninterrupted run scored it, with the committed rows counted in the manifest and nothing left
beside the output."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import read_rows, varied_texts

from batchsent.settings.naming import ray_progress_location

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
ENGINES = [
    pytest.param("local", id="local"),
    pytest.param("ray", id="ray", marks=[pytest.mark.ray, needs_ray]),
]
FILES, ROWS, CHUNK_ROWS = 3, 1000, 100


def write_inputs(folder: Path) -> Path:
    """CSV files with a unique id per row, texts of 1-60 words."""
    folder.mkdir(parents=True)
    for index in range(FILES):
        with open(folder / f"part-{index}.csv", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["id", "text"])
            writer.writerows(
                (f"{index}-{row}", text) for row, text in enumerate(varied_texts(ROWS, seed=index, longest_words=60))
            )
    return folder


def start(engine: str, source: Path, model: Path, output: Path, *extra: str) -> subprocess.Popen:
    """A run in its own process group, so kill -9 takes the local Ray instance a Ray run started with it."""
    args = [sys.executable, "-m", "batchsent", "score", str(source), "--engine", engine, "--model", str(model)]
    args += ["-o", str(output), "--chunk-rows", str(CHUNK_ROWS), "--threads", "1", "-q", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=400)
    return process.returncode, stderr


def committed_chunks(engine: str, output: Path) -> int:
    """Chunks committed so far: the local engine's checkpoint parts (one progress folder per file, inside the
    output folder, plus files already finished), or the parts Ray wrote beside the output."""
    if engine == "ray":
        return len(list((Path(ray_progress_location(output)) / "parts").rglob("*.parquet")))
    if not output.exists():
        return 0
    finished = sum(ROWS // CHUNK_ROWS for path in output.glob("*.csv"))
    return finished + len(list(output.glob(".*.batchsent/part-*.arrow")))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_kill_9_then_resume_gives_every_row_once_as_an_uninterrupted_run(engine, binary_model, tmp_path):
    source = write_inputs(tmp_path / "in")
    reference = tmp_path / "reference"
    code, stderr = finish(start(engine, source, binary_model, reference))
    assert code == 0, stderr

    output = tmp_path / "out"
    process = start(engine, source, binary_model, output)
    deadline = time.monotonic() + 300
    while committed_chunks(engine, output) < 3:
        assert process.poll() is None, f"the run ended before it was killed: {process.communicate()[1]}"
        assert time.monotonic() < deadline, "no chunk committed in time"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if engine == "ray":  # Ray publishes the folder once every row is merged; the local engine file by file
        assert not output.exists()

    code, stderr = finish(start(engine, source, binary_model, output))
    assert code == 2 and "interrupted" in stderr and "--resume" in stderr, stderr
    code, stderr = finish(start(engine, source, binary_model, output, "--resume", "--all-scores"))
    assert code == 2 and "cannot resume: options.all_scores (False -> True) changed" in stderr, stderr

    manifest = tmp_path / "run.json"
    code, stderr = finish(start(engine, source, binary_model, output, "--resume", "--manifest", str(manifest)))
    assert code == 0, stderr
    got, expected = read_rows(output), read_rows(reference)
    assert list(got) == list(expected)  # every row once, in each file's order
    assert [row["sentiment_label"] for row in got.values()] == [row["sentiment_label"] for row in expected.values()]
    np.testing.assert_allclose(  # rows batched with other rows move in the last bits (a Ray block is not a chunk)
        [float(row["sentiment_score"]) for row in got.values()],
        [float(row["sentiment_score"]) for row in expected.values()],
        atol=1e-5,
    )
    if engine == "local":  # the local engine replays the committed chunks as they were: the same bytes
        for path in reference.glob("*.csv"):
            assert (output / path.name).read_bytes() == path.read_bytes()
    facts = json.loads(manifest.read_text())
    assert facts["rows_total"] == FILES * ROWS
    assert 0 < facts["rows_resumed_from"] < FILES * ROWS  # the resumed run skipped what was committed
    assert sorted(p.name for p in output.iterdir()) == [f"part-{index}.csv" for index in range(FILES)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out", "reference", "run.json"]  # nothing stray
