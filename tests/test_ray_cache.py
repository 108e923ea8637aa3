"""--engine ray --cache: a shared cache (folder or object prefix) across runs, through a killed run and its
resume, and refused in one line when it is not a batchsent cache. Each run is its own process, as cron runs it."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_ray_scale import assert_equal_runs, command, finish, parts_written, read_rows, start, wait_for, write_inputs

from batchsent.cache.store import PredictionCache

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed"),
]


def texts_of(folder: Path) -> list[str]:
    return [row["text"] for path in sorted(folder.glob("*.csv")) for row in csv.DictReader(open(path, newline=""))]


def cache_entries(location: str, env: dict[str, str] | None = None) -> int:
    result = subprocess.run(
        [sys.executable, "-m", "batchsent", "cache", "stats", location, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["entries"]


def test_a_second_run_scores_only_what_the_cache_lacks_and_equals_an_uncached_run(tmp_path, binary_model):
    source = write_inputs(tmp_path / "in", files=2, rows=300)
    cache = str(tmp_path / "cache")
    code, stderr = finish(start(command(str(source), binary_model, str(tmp_path / "first"), "--cache", cache)))
    assert code == 0 and "from the cache" not in stderr, stderr
    first_texts = set(texts_of(source))
    assert cache_entries(cache) == len(first_texts)

    write_inputs(tmp_path / "in", files=3, rows=300, seed=1)  # tonight: files 1 and 2 change, file 0 stays
    tonight = texts_of(source)
    expected_hits = sum(text in first_texts for text in tonight)
    assert 0 < expected_hits < len(tonight)
    code, stderr = finish(
        start(
            command(
                str(source),
                binary_model,
                str(tmp_path / "second"),
                "--cache",
                cache,
                "--workers",
                "2",
                "--manifest",
                str(tmp_path / "run.json"),
            )
        )
    )
    assert code == 0, stderr
    assert f"done: 900 rows: 900 scored ({expected_hits:,} from the cache)" in stderr
    assert json.loads((tmp_path / "run.json").read_text())["from_cache"] == expected_hits
    assert cache_entries(cache) == len(first_texts | set(tonight))

    code, stderr = finish(start(command(str(source), binary_model, str(tmp_path / "uncached"))))
    assert code == 0, stderr
    assert_equal_runs(read_rows(tmp_path / "second"), read_rows(tmp_path / "uncached"))  # labels; scores to 1e-5


def test_a_killed_run_leaves_the_object_storage_cache_sound_and_its_resume_fills_it(tmp_path, binary_model, s3_env):
    env, client = s3_env
    source = write_inputs(tmp_path / "in", files=4, rows=750)
    cache = "s3://nightly/caches/reviews"
    output = tmp_path / "out"
    process = start(
        command(str(source), binary_model, str(output), "--cache", cache, "--chunk-rows", "100", "--threads", "1"), env
    )
    wait_for(lambda: parts_written(output) >= 2, 300, process)  # a part per file here: 2 of 4 scored
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert cache_entries(cache, env) == 0  # entries are added when the parts merge: none yet, and a sound cache

    code, stderr = finish(
        start(command(str(source), binary_model, str(output), "--cache", cache, "--chunk-rows", "100", "--resume"), env)
    )
    assert code == 0 and "done: 3,000 rows: 3,000 scored" in stderr, stderr
    distinct = len(set(texts_of(source)))
    assert cache_entries(cache, env) == distinct

    code, stderr = finish(start(command(str(source), binary_model, str(tmp_path / "again"), "--cache", cache), env))
    assert code == 0 and "done: 3,000 rows: 3,000 scored (3,000 from the cache)" in stderr, stderr
    assert_equal_runs(read_rows(tmp_path / "again"), read_rows(output))
    assert cache_entries(cache, env) == distinct  # nothing doubled
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="nightly", Prefix="caches/")["Contents"]]
    assert all(key.endswith((".json", ".parquet")) for key in keys), keys  # no half-written object


@pytest.mark.parametrize("kind", ["foreign folder", "sqlite file"])
def test_a_cache_that_is_not_a_batchsent_cache_is_one_line_before_the_cluster_works(tmp_path, binary_model, kind):
    source = write_inputs(tmp_path / "in", files=1, rows=20)
    if kind == "foreign folder":
        location = tmp_path / "photos"
        location.mkdir()
        (location / "a.jpg").write_bytes(b"\xff\xd8")
        message = "not a batchsent cache"
    else:
        location = tmp_path / "cache.sqlite"
        PredictionCache(location).close()
        message = "a file, and a Ray run's cache is a folder or an object prefix"
    code, stderr = finish(start(command(str(source), binary_model, str(tmp_path / "out"), "--cache", str(location))))
    assert code == 2 and stderr.count("\n") == 1 and message in stderr, stderr
    assert "Started a local Ray instance" not in stderr and not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.batchsent-ray"))


def test_the_cache_is_never_inside_the_output_it_replaces(tmp_path, binary_model):
    source = write_inputs(tmp_path / "in", files=1, rows=20)
    (tmp_path / "out").mkdir()
    code, stderr = finish(
        start(
            command(
                str(source),
                binary_model,
                str(tmp_path / "out"),
                "--overwrite",
                "--cache",
                str(tmp_path / "out" / "cache"),
            )
        )
    )
    assert code == 2 and "lies inside --output" in stderr and stderr.count("\n") == 1, stderr


def test_a_cache_folder_and_the_inputs_never_overlap(tmp_path, binary_model):
    from typer.testing import CliRunner

    from batchsent.cli import app

    source = write_inputs(tmp_path / "in", files=1, rows=20)
    base = ["score", "--engine", "ray", "--model", str(binary_model), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*base[:1], str(source), *base[1:], "--cache", str(source / "cache")])
    assert result.exit_code == 2 and "lies inside the input folder" in result.output, result.output
    result = CliRunner().invoke(app, [*base[:1], str(source / "part-0.csv"), *base[1:], "--cache", str(source)])
    assert result.exit_code == 2 and "lies inside --cache" in result.output, result.output
    assert sorted(p.name for p in source.iterdir()) == ["part-0.csv"]  # nothing written among the inputs
