"""The prediction cache (--cache) and the scoring of each distinct text once per run."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import build_tiny_model, varied_texts
from typer.testing import CliRunner

from batchsent import score_file
from batchsent.cache.store import SCHEMA_VERSION, PredictionCache, digest
from batchsent.cli import app
from batchsent.errors import UsageError
from batchsent.model.classifier import Classifier
from batchsent.settings.options import JobConfig
from batchsent.state.checkpoint import Checkpoint

runner = CliRunner()
TOLERANCE = 2e-6  # a float32 probability moves in its last bits with its batch companions


def corpus_texts(rows: int, seed: int) -> list[str | None]:
    """Varied texts with what real exports hold: repeats, blanks, and Unicode/whitespace near-twins."""
    rng = random.Random(seed)
    base = varied_texts(rows, seed=seed, longest_words=80)
    texts: list[str | None] = []
    for i, text in enumerate(base):
        if i % 7 == 3:
            text = base[rng.randrange(i)] if i else text  # a repeat of an earlier row
        texts.append(text)
    texts[5], texts[11] = None, "   "
    texts[20:24] = ["café", "cafe\u0301", "café ", "Café"]  # NFC, NFD, a trailing space, a capital
    return texts


def write_input(path: Path, texts: list[str | None]) -> Path:
    table = pa.table({"id": [f"{i:04d}" for i in range(len(texts))], "text": texts})
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix == ".tsv":  # no quoting in TSV: a blank is an empty cell
        rows = (f"{i:04d}\t{t or ''}\n" for i, t in enumerate(texts))
        path.write_text("id\ttext\n" + "".join(rows), encoding="utf-8")
    else:
        pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="all_valid"))
    return path


def read_output(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    delimiter = "\t" if path.suffix == ".tsv" else ","
    return pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=delimiter != "\t" and '"'),
        convert_options=pacsv.ConvertOptions(column_types={"id": pa.string(), "text": pa.string()}),
    )


def assert_agree(table: pa.Table, reference: pa.Table, inputs=("id", "text")) -> None:
    """Input cells and labels identical; every probability within TOLERANCE."""
    assert table.column_names == reference.column_names
    for name in inputs:
        assert table[name].to_pylist() == reference[name].to_pylist()
    assert table["sentiment_label"].to_pylist() == reference["sentiment_label"].to_pylist()
    for name in table.column_names:
        if name.startswith("sentiment_score"):
            got = np.array(table[name].to_pylist(), dtype=float)
            want = np.array(reference[name].to_pylist(), dtype=float)
            np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_cached_rows_agree_with_an_uncached_run_and_a_second_run_is_byte_identical(tmp_path, binary_model, suffix):
    texts = corpus_texts(300, seed=1)
    source = write_input(tmp_path / f"in{suffix}", texts)
    cache = tmp_path / "cache.sqlite"
    common = {"model": str(binary_model), "chunk_rows": 64, "all_scores": True, "quiet": True}
    plain = score_file(source, tmp_path / f"plain{suffix}", token_budget=1024, **common)
    first = score_file(source, tmp_path / f"first{suffix}", token_budget=4096, cache=cache, **common)
    second = score_file(source, tmp_path / f"second{suffix}", token_budget=1024, cache=cache, **common)

    distinct = len({t for t in texts if t is not None and t.strip()})
    assert plain.cached == first.cached == 0
    assert plain.duplicates == first.duplicates == plain.scored - distinct > 0
    assert (second.cached, second.duplicates) == (second.scored, 0)  # every row's values came from the cache
    assert (tmp_path / f"second{suffix}").read_bytes() == (tmp_path / f"first{suffix}").read_bytes()
    assert_agree(read_output(tmp_path / f"second{suffix}"), read_output(tmp_path / f"plain{suffix}"))
    assert (
        read_output(tmp_path / f"second{suffix}")
        .slice(0, 300)
        .select(["id", "text"])
        .equals(read_output(source).select(["id", "text"]))
    )


def test_every_repeat_of_a_text_in_a_run_is_scored_once_with_the_first_rows_bytes(tmp_path, binary_model, monkeypatch):
    texts = [f"review number {i % 37} was {'good' if i % 2 else 'bad'}" for i in range(400)]
    source = write_input(tmp_path / "in.csv", texts)
    seen: list[str] = []
    original = Classifier.encode

    def counting(self, batch_texts, pairs=None):
        seen.extend(t for t in batch_texts if t is not None)
        return original(self, batch_texts, pairs)

    monkeypatch.setattr(Classifier, "encode", counting)
    summary = score_file(source, tmp_path / "out.parquet", model=str(binary_model), chunk_rows=50, quiet=True)
    assert sorted(seen) == sorted(set(texts))  # across chunks too, with no --cache
    assert summary.duplicates == 400 - len(set(texts)) and summary.cached == 0
    table = pq.read_table(tmp_path / "out.parquet")
    first_score: dict[str, float] = {}
    for text, score in zip(table["text"].to_pylist(), table["sentiment_score"].to_pylist(), strict=True):
        assert first_score.setdefault(text, score) == score


def test_unicode_and_whitespace_variants_are_different_texts(tmp_path, binary_model):
    variants = ["café", "cafe\u0301", "café ", " café", "Café", "café\n", "cafe"]
    assert len({digest(v) for v in variants}) == len(variants)
    source = write_input(tmp_path / "in.csv", variants)
    cache = tmp_path / "cache.sqlite"
    score_file(source, tmp_path / "a.csv", model=str(binary_model), cache=cache, quiet=True)
    assert PredictionCache(cache).stats()["entries"] == len(variants)
    again = score_file(
        write_input(tmp_path / "in2.csv", ["café\t", "café"]),
        tmp_path / "b.csv",
        model=str(binary_model),
        cache=cache,
        quiet=True,
    )
    assert (again.cached, again.duplicates) == (1, 0)


def test_the_cache_stores_digests_never_the_texts(tmp_path, binary_model):
    secret = "my account number is 4242-4242 and I am furious"
    cache = tmp_path / "cache.sqlite"
    score_file(
        write_input(tmp_path / "in.csv", [secret]),
        tmp_path / "out.csv",
        model=str(binary_model),
        cache=cache,
        quiet=True,
    )
    PredictionCache(cache).connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = cache.read_bytes()
    assert b"4242-4242" not in raw and secret.encode() not in raw
    assert digest(secret) in raw


@pytest.fixture
def cached_run(tmp_path, binary_model):
    """A first run that filled a cache from 120 texts."""
    texts = corpus_texts(120, seed=3)
    source = write_input(tmp_path / "in.csv", texts)
    cache = tmp_path / "cache.sqlite"
    score_file(source, tmp_path / "first.csv", model=str(binary_model), cache=cache, quiet=True)
    return source, cache, texts


@pytest.mark.parametrize(
    ("change", "reused"),
    [
        ({}, True),
        ({"token_budget": 256, "batch_size": 3, "threads": 1, "chunk_rows": 17}, True),  # batching only
        ({"prefix": "mood_", "all_scores": True}, True),  # naming only
        ({"max_length": 16}, False),
        ({"long_text": "chunk"}, False),
        ({"long_text": "chunk", "stride": 8, "max_length": 32}, False),
        ({"dtype": "bfloat16"}, False),
        ({"quantize": "int8"}, False),
    ],
)
def test_only_options_that_change_a_probability_miss_the_cache(cached_run, tmp_path, binary_model, change, reused):
    source, cache, texts = cached_run
    try:
        summary = score_file(source, tmp_path / "again.csv", model=str(binary_model), cache=cache, quiet=True, **change)
    except UsageError as refusal:
        pytest.skip(f"this CPU cannot run {change}: {refusal}")
    non_blank = sum(1 for t in texts if t is not None and t.strip())
    assert summary.cached == (non_blank if reused else 0)


def test_a_changed_model_or_text_is_scored_again(cached_run, tmp_path, binary_model):
    source, cache, texts = cached_run
    retrained = build_tiny_model(tmp_path / "retrained", "binary", seed=7)
    assert score_file(source, tmp_path / "other.csv", model=str(retrained), cache=cache, quiet=True).cached == 0
    edited = list(texts)
    edited[0] = edited[0] + "!"
    changed = write_input(tmp_path / "edited.csv", edited)
    distinct = len({t for t in texts if t is not None and t.strip()})
    summary = score_file(changed, tmp_path / "edited.scored.csv", model=str(binary_model), cache=cache, quiet=True)
    assert (summary.cached, summary.duplicates) == (summary.scored - 1, 0)
    stats = PredictionCache(cache).stats()
    assert [m["entries"] for m in stats["models"]] == [distinct + 1, distinct]


def test_manifest_and_summary_say_how_many_rows_came_from_the_cache(cached_run, tmp_path, binary_model):
    source, cache, _ = cached_run
    manifest = tmp_path / "manifest.json"
    result = runner.invoke(
        app,
        [
            "score",
            str(source),
            "-o",
            str(tmp_path / "again.csv"),
            "--model",
            str(binary_model),
            "--cache",
            str(cache),
            "--manifest",
            str(manifest),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    facts = json.loads(manifest.read_text())
    assert facts["from_cache"] > 0 and facts["options"]["cache"] == str(cache)
    assert f"({facts['from_cache']:,} from the cache" in result.output


def test_resume_and_cache_work_together(tmp_path, binary_model, monkeypatch):
    from conftest import fail_third_chunk

    texts = corpus_texts(400, seed=5)
    source = write_input(tmp_path / "in.parquet", texts)
    cache = tmp_path / "cache.sqlite"
    options = {"model": str(binary_model), "chunk_rows": 60, "quiet": True, "cache": cache}
    reference = score_file(source, tmp_path / "reference.parquet", **{**options, "cache": tmp_path / "fresh.sqlite"})
    with monkeypatch.context() as patch:
        fail_third_chunk(patch, "CUDA error: out of memory")
        with pytest.raises(Exception, match="out of memory"):
            score_file(source, tmp_path / "out.parquet", **options)
    summary = score_file(source, tmp_path / "out.parquet", resume=True, **options)
    assert summary.resumed_rows == 120 and summary.rows == reference.rows
    assert (tmp_path / "out.parquet").read_bytes() == (tmp_path / "reference.parquet").read_bytes()


@pytest.mark.slow
def test_two_runs_share_one_cache_at_once(tmp_path, binary_model):
    cache = tmp_path / "cache.sqlite"
    texts_a, texts_b = corpus_texts(600, seed=8), corpus_texts(600, seed=9)
    texts_b[300:] = texts_a[300:]  # half of each file is the other's
    files = [write_input(tmp_path / "a.csv", texts_a), write_input(tmp_path / "b.csv", texts_b)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "batchsent",
                "score",
                str(f),
                "-o",
                str(f.with_suffix(".out.csv")),
                "--model",
                str(binary_model),
                "--cache",
                str(cache),
                "--chunk-rows",
                "25",
                "--threads",
                "1",
                "-q",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in files
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    for f in files:
        plain = f.with_suffix(".plain.csv")
        score_file(f, plain, model=str(binary_model), quiet=True)
        assert_agree(read_output(f.with_suffix(".out.csv")), read_output(plain))
    store = PredictionCache(cache)
    assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    distinct = {t for t in texts_a + texts_b if t is not None and t.strip()}
    assert store.stats()["entries"] == len(distinct)


@pytest.mark.slow
def test_kill_9_while_writing_leaves_a_sound_cache_and_resume_is_exact(tmp_path, binary_model):
    texts = corpus_texts(1500, seed=11)
    source = write_input(tmp_path / "in.csv", texts)

    def command(output: Path, cache: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "batchsent",
            "score",
            str(source),
            "--model",
            str(binary_model),
            "-o",
            str(output),
            "--cache",
            str(cache),
            "--chunk-rows",
            "40",
            "--threads",
            "1",
            "-q",
            *extra,
        ]

    reference = tmp_path / "reference.csv"
    subprocess.run(command(reference, tmp_path / "reference.sqlite"), check=True, capture_output=True)
    expected = {
        digest(t): s
        for t, s in zip(texts, read_output(reference)["sentiment_score"].to_pylist(), strict=True)
        if t is not None and t.strip()
    }
    for seed in range(3):
        rng = random.Random(seed)
        output, cache = tmp_path / f"out-{seed}.csv", tmp_path / f"cache-{seed}.sqlite"
        process = subprocess.Popen(command(output, cache), stderr=subprocess.DEVNULL)
        parts, target = Checkpoint(output).directory, rng.randint(2, 20)
        deadline = time.monotonic() + 120
        while len(list(parts.glob("part-*"))) < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
        process.send_signal(signal.SIGKILL)
        process.wait()
        store = sqlite3.connect(cache)
        assert store.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = store.execute("SELECT digest, probabilities FROM predictions").fetchall()
        assert rows, "the kill came before any chunk was cached"
        for key, blob in rows:  # every cached entry is the right text's
            assert abs(max(np.frombuffer(blob, np.float32)) - expected[key]) <= TOLERANCE
        store.close()
        resumed = subprocess.run(command(output, cache, "--resume"), capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        assert output.read_bytes() == reference.read_bytes()


def test_a_cache_of_another_schema_version_or_another_program_is_refused_before_the_model_loads(tmp_path, cached_run):
    source, cache, _ = cached_run
    other = sqlite3.connect(cache)
    other.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    other.close()
    unrelated = tmp_path / "app.db"
    sqlite3.connect(unrelated).execute("CREATE TABLE t (x)").connection.close()
    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a database at all, just some notes\n" * 100)
    expected = {
        cache: f"schema version {SCHEMA_VERSION + 1}",
        unrelated: "not a batchsent cache",
        garbage: "not a SQLite database",
        tmp_path: "is a directory",
    }
    for path, message in expected.items():
        result = runner.invoke(
            app,
            [
                "score",
                str(source),
                "-o",
                str(tmp_path / "out.csv"),
                "--cache",
                str(path),
                "--model",
                str(tmp_path / "no-such-model"),
            ],
        )
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], result.output
        assert not (tmp_path / "out.csv").exists()
    assert garbage.read_text().startswith("not a database")


@contextlib.contextmanager
def read_only_folder(folder: Path):
    """``folder`` made read-only by its permissions (root ignores them: the tmpfs test covers root)."""
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions; the read-only tmpfs test covers this")
    folder.chmod(0o555)
    try:
        yield
    finally:
        folder.chmod(0o755)


def _mount(folder: Path, options: str) -> bool:
    folder.mkdir(exist_ok=True)
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode
        == 0
    )


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs of its own (needs root and mount rights; skipped elsewhere)."""
    folder = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount(folder, "size=1m"):
        pytest.skip("mounting a tmpfs needs root and mount rights")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_cache_on_a_read_only_disk_is_one_line_and_exit_2(cached_run, tmp_path, small_disk, binary_model):
    source, _cache, _ = cached_run
    on_disk = small_disk / "cache.sqlite"
    score_file(source, tmp_path / "warm.csv", model=str(binary_model), cache=on_disk, quiet=True)
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True).returncode == 0
    result = runner.invoke(
        app,
        ["score", str(source), "-o", str(tmp_path / "out.csv"), "--cache", str(on_disk), "--model", str(binary_model)],
    )
    assert result.exit_code == 2, result.output
    assert next(line for line in result.output.splitlines() if line.startswith("error:")).startswith(
        f"error: --cache {on_disk}: "
    )
    assert not (tmp_path / "out.csv").exists()


def test_a_cache_in_a_read_only_folder_is_one_line_and_exit_2(cached_run, tmp_path, binary_model):
    source, _, _ = cached_run
    folder = tmp_path / "locked"
    folder.mkdir()
    with read_only_folder(folder):
        result = runner.invoke(
            app,
            [
                "score",
                str(source),
                "-o",
                str(tmp_path / "out.csv"),
                "--cache",
                str(folder / "cache.sqlite"),
                "--model",
                str(binary_model),
            ],
        )
    assert result.exit_code == 2 and "error: --cache" in result.output


@pytest.mark.slow
def test_a_full_disk_under_the_cache_fails_with_one_line_keeps_progress_and_resume_finishes(tmp_path, binary_model):
    texts = [f"text {i} " + "word " * (i % 9) for i in range(3000)]
    source = write_input(tmp_path / "in.csv", texts)
    output, cache = tmp_path / "out.csv", tmp_path / "cache.sqlite"
    command = [
        sys.executable,
        "-m",
        "batchsent",
        "score",
        str(source),
        "--model",
        str(binary_model),
        "-o",
        str(output),
        "--cache",
        str(cache),
        "--chunk-rows",
        "100",
        "--threads",
        "1",
        "-q",
    ]

    def file_size_limit() -> None:  # every file this process writes stops growing at 96 KiB, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (96 * 1024, 96 * 1024))

    failed = subprocess.run(command, capture_output=True, text=True, preexec_fn=file_size_limit)
    assert failed.returncode == 1, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cache {cache}: cannot write" in errors[0], failed.stderr
    assert Checkpoint(output).load().rows > 0 and not output.exists()
    assert sqlite3.connect(cache).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    plain = tmp_path / "plain.csv"
    score_file(source, plain, model=str(binary_model), quiet=True, chunk_rows=100)
    assert_agree(read_output(output), read_output(plain))


def test_cache_stats_and_prune(cached_run, tmp_path, binary_model):
    source, cache, texts = cached_run
    retrained = build_tiny_model(tmp_path / "retrained", "binary", seed=7)
    score_file(source, tmp_path / "other.csv", model=str(retrained), cache=cache, quiet=True)
    distinct = len({t for t in texts if t is not None and t.strip()})

    stats = runner.invoke(app, ["cache", "stats", str(cache)])
    assert stats.exit_code == 0, stats.output
    assert f"{2 * distinct:,} entries, 2 model key(s)" in stats.output and str(retrained) in stats.output

    old = int(time.time()) - 40 * 86400
    with sqlite3.connect(cache) as connection:
        aged = connection.execute(
            "UPDATE predictions SET used = ? WHERE model = 1 AND digest IN "
            "(SELECT digest FROM predictions WHERE model = 1 LIMIT 10)",
            (old,),
        ).rowcount
    pruned = runner.invoke(app, ["cache", "prune", str(cache), "--older-than", "30d"])
    assert pruned.exit_code == 0 and f"removed {aged:,} entries" in pruned.output, pruned.output
    pruned = runner.invoke(app, ["cache", "prune", str(cache), "--model", str(retrained)])
    assert pruned.exit_code == 0 and f"removed {distinct:,} entries and 1 model key" in pruned.output, pruned.output
    assert PredictionCache(cache).stats()["entries"] == distinct - aged

    for arguments, message in [
        (["prune", str(cache)], "needs --older-than"),
        (["prune", str(cache), "--older-than", "30 days"], "expected a number and a unit"),
        (["prune", str(cache), "--model", "nope"], "no model 'nope'"),
        (["stats", str(tmp_path / "missing.sqlite")], "no such cache file"),
    ]:
        result = runner.invoke(app, ["cache", *arguments])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "missing.sqlite").exists()


def test_cache_in_a_job_file_and_an_object_prefix_only_for_ray(tmp_path, binary_model):
    from batchsent.settings.jobfile import build_config

    job = tmp_path / "nightly.toml"
    job.write_text('input = "in.csv"\ncache = "state/cache.sqlite"\n')
    assert build_config({}, job).cache == tmp_path / "state" / "cache.sqlite"
    assert JobConfig(input=Path("in.csv"), engine="ray", cache="s3://bucket/cache").cache == "s3://bucket/cache"
    with pytest.raises(UsageError, match="--cache must be a local path"):
        JobConfig(input=Path("in.csv"), cache="s3://bucket/cache")


def test_a_night_whose_rows_are_all_cached_never_loads_the_model(tmp_path, binary_model, monkeypatch):
    from batchsent.model.classifier import Classifier

    texts = corpus_texts(120, seed=21)
    source = write_input(tmp_path / "in.csv", texts)
    cache = tmp_path / "cache.sqlite"
    first = runner.invoke(
        app,
        [
            "score",
            str(source),
            "-o",
            str(tmp_path / "one.csv"),
            "--model",
            str(binary_model),
            "--cache",
            str(cache),
            "--chunk-rows",
            "40",
        ],
    )
    assert first.exit_code == 0, first.output
    loads = {"n": 0}
    real = Classifier.load_weights

    def counted(self):  # the weights, or the model's kept trace (runtime.graphs), read from disk
        loads["n"] += not self.weights_loaded
        return real(self)

    monkeypatch.setattr(Classifier, "load_weights", counted)
    second = runner.invoke(
        app,
        [
            "score",
            str(source),
            "-o",
            str(tmp_path / "two.csv"),
            "--model",
            str(binary_model),
            "--cache",
            str(cache),
            "--chunk-rows",
            "40",
        ],
    )
    assert second.exit_code == 0, second.output
    assert loads["n"] == 0 and "the model was not loaded: every row came from the cache" in second.output
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    tomorrow = write_input(tmp_path / "tomorrow.csv", [*texts, "a text no night has seen before"])
    third = runner.invoke(
        app,
        [
            "score",
            str(tomorrow),
            "-o",
            str(tmp_path / "three.csv"),
            "--model",
            str(binary_model),
            "--cache",
            str(cache),
            "--chunk-rows",
            "40",
        ],
    )
    assert third.exit_code == 0 and loads["n"] == 1, third.output
    assert "loaded in" in third.output and "for the rows the cache does not hold" in third.output
    plain = tmp_path / "plain.csv"
    score_file(tomorrow, plain, model=str(binary_model), chunk_rows=40, quiet=True)
    assert_agree(read_output(tmp_path / "three.csv"), read_output(plain))
