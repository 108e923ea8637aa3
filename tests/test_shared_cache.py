"""The shared cache of --engine ray (a folder or object prefix): lookups, additions, concurrent writers,
leftovers of a killed writer, stats, prune and the export from a SQLite cache. Ray runs that use it are
in test_ray_cache.py."""

from __future__ import annotations

import multiprocessing
import os
import time
import zlib

import numpy as np
import pytest
from typer.testing import CliRunner

from batchsent.cache.shared import HIT_REFRESH_SECONDS, LEFTOVER_SECONDS, SharedCache, entries_table
from batchsent.cache.store import CacheError, PredictionCache, digest
from batchsent.cli import app

runner = CliRunner()
DESCRIPTION = {"model": {"hub_id": "tiny"}, "dtype": "float32"}


def texts(start: int, stop: int) -> list[str]:
    return [f"review number {i}" for i in range(start, stop)]


def probabilities(values: list[str]) -> np.ndarray:
    """Probabilities that are a function of the text, so any entry can be checked against it."""
    first = np.array([(zlib.crc32(text.encode()) % 1000) / 1000 for text in values], dtype=np.float32)
    return np.stack([first, 1 - first], axis=1)


def add(cache: SharedCache, key: str, values: list[str], used: int | None = None) -> None:
    cache.add(
        key,
        entries_table(
            [digest(t) for t in values],
            probabilities(values),
            [len(t) > 17 for t in values],
            [None] * len(values),
            int(time.time()) if used is None else used,
            2,
        ),
    )


def test_lookups_find_what_was_added_and_nothing_else(tmp_path):
    cache = SharedCache(tmp_path / "cache")
    model = cache.register("tiny", DESCRIPTION, ["NEGATIVE", "POSITIVE"])
    add(cache, model.key, texts(0, 3000))
    asked = texts(2900, 3100)
    found = SharedCache(tmp_path / "cache", create=False).lookup(model, [digest(t) for t in asked] + [None], 2)
    assert found.hit.tolist() == [True] * 100 + [False] * 101  # the misses, and a blank row
    np.testing.assert_array_equal(found.probabilities[:100], probabilities(asked[:100]))
    assert found.truncated[:100].tolist() == [len(t) > 17 for t in asked[:100]]
    assert not found.stale.any()
    other = cache.register("tiny", {**DESCRIPTION, "dtype": "bfloat16"}, ["NEGATIVE", "POSITIVE"])
    assert other.key != model.key and not cache.lookup(other, [digest(asked[0])], 2).hit.any()  # another key


def test_an_entry_added_twice_is_one_entry_and_the_newest_use_counts(tmp_path):
    cache = SharedCache(tmp_path / "cache")
    model = cache.register("tiny", DESCRIPTION, ["NEGATIVE", "POSITIVE"])
    old = int(time.time()) - HIT_REFRESH_SECONDS - 60
    add(cache, model.key, texts(0, 500), used=old)
    add(cache, model.key, texts(0, 500), used=old)  # a retried merge: the same segment names, nothing doubled
    add(cache, model.key, texts(400, 600))  # another run: overlapping texts, used now
    assert cache.stats()["entries"] == 600
    buckets = list((tmp_path / "cache" / "entries" / model.key).iterdir())
    assert max(len(list(bucket.glob("*.parquet"))) for bucket in buckets) == 2  # two contents, not three files
    found = SharedCache(tmp_path / "cache").lookup(model, [digest(t) for t in texts(0, 600)], 2)
    assert found.hit.all() and found.stale.tolist() == [True] * 400 + [False] * 200  # stale: written again by a run


def test_not_a_batchsent_cache_is_refused_in_one_line(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(CacheError, match="not a batchsent cache"):
        SharedCache(tmp_path / "photos")
    assert sorted(os.listdir(tmp_path / "photos")) == ["a.jpg"]  # nothing written into it
    sqlite = tmp_path / "cache.sqlite"
    PredictionCache(sqlite).close()
    with pytest.raises(CacheError, match=r"a file, and a Ray run's cache is a folder.*cache export"):
        SharedCache(sqlite)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "batchsent-cache.json").write_text('{"format": "something-else"}')
    with pytest.raises(CacheError, match="not a batchsent cache"):
        SharedCache(tmp_path / "other")
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / "batchsent-cache.json").write_text('{"format": "batchsent-shared-cache", "version": 9}')
    with pytest.raises(CacheError, match="version 9"):
        SharedCache(tmp_path / "newer")
    with pytest.raises(CacheError, match="does not exist"):
        SharedCache(tmp_path / "missing" / "cache")
    with pytest.raises(CacheError, match="no such cache"):
        SharedCache(tmp_path / "empty-and-not-created", create=False)


def _writer(location: str, key: str, start: int, stop: int, rounds: int) -> None:
    cache = SharedCache(location, create=False)
    for _ in range(rounds):
        add(cache, key, texts(start, stop))


def _pruner(location: str, rounds: int) -> None:
    cache = SharedCache(location, create=False)
    for _ in range(rounds):
        cache.prune(older_than_seconds=3600)  # nothing is that old: every bucket is rewritten, nothing is lost


def test_concurrent_writers_readers_and_a_prune_leave_every_entry_once(tmp_path):
    location = str(tmp_path / "cache")
    model = SharedCache(location).register("tiny", DESCRIPTION, ["NEGATIVE", "POSITIVE"])
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_writer, args=(location, model.key, start, start + 1500, 3)) for start in (0, 1000)
    ] + [context.Process(target=_pruner, args=(location, 3))]
    for worker in workers:
        worker.start()
    reader = SharedCache(location, create=False)
    wanted = texts(0, 2500)
    while any(worker.is_alive() for worker in workers):  # a reader during it all: every hit holds its own values
        reader.close()  # forget what was loaded: read the buckets as they are now
        found = reader.lookup(model, [digest(t) for t in wanted], 2)
        np.testing.assert_array_equal(found.probabilities[found.hit], probabilities(wanted)[found.hit])
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    final = SharedCache(location, create=False)
    assert final.stats()["entries"] == 2500
    found = final.lookup(model, [digest(t) for t in wanted], 2)
    assert found.hit.all()
    np.testing.assert_array_equal(found.probabilities, probabilities(wanted))


def test_a_killed_writers_leftover_is_never_read_and_prune_removes_it_a_day_later(tmp_path):
    cache = SharedCache(tmp_path / "cache")
    model = cache.register("tiny", DESCRIPTION, ["NEGATIVE", "POSITIVE"])
    add(cache, model.key, texts(0, 100))
    bucket = next((tmp_path / "cache" / "entries" / model.key).iterdir())
    leftover = bucket / ".0123.parquet.deadbeef.partial"
    leftover.write_bytes(b"PAR1 half a file")
    assert cache.stats()["entries"] == 100
    assert SharedCache(tmp_path / "cache").lookup(model, [digest(t) for t in texts(0, 100)], 2).hit.all()
    cache.prune(older_than_seconds=30 * 86400)
    assert leftover.exists()  # it may be a writer still at work
    os.utime(leftover, (time.time() - LEFTOVER_SECONDS - 60,) * 2)
    cache.prune(older_than_seconds=30 * 86400)
    assert not leftover.exists() and cache.stats()["entries"] == 100


def test_stats_and_prune_commands_on_a_folder(tmp_path):
    location = tmp_path / "cache"
    cache = SharedCache(location)
    cache.start_run("test")
    model = cache.register("tiny", DESCRIPTION, ["NEGATIVE", "POSITIVE"])
    retrained = cache.register("retrained", {**DESCRIPTION, "model": {"hub_id": "retrained"}}, ["NEGATIVE", "POSITIVE"])
    add(cache, model.key, texts(0, 300), used=int(time.time()) - 40 * 86400)
    add(cache, model.key, texts(300, 400))
    add(cache, retrained.key, texts(0, 50))

    stats = runner.invoke(app, ["cache", "stats", str(location)])
    assert stats.exit_code == 0, stats.output
    assert f"{location}: 450 entries, 2 model key(s)" in stats.output and "1 run(s)" in stats.output
    assert "tiny: 400 entries" in stats.output and "retrained: 50 entries" in stats.output
    pruned = runner.invoke(app, ["cache", "prune", str(location), "--older-than", "30d"])
    assert pruned.exit_code == 0 and "removed 300 entries and 0 model key(s)" in pruned.output, pruned.output
    pruned = runner.invoke(app, ["cache", "prune", str(location), "--model", "retrained"])
    assert pruned.exit_code == 0 and "removed 50 entries and 1 model key(s)" in pruned.output, pruned.output
    assert SharedCache(location).stats()["entries"] == 100
    assert [m["name"] for m in SharedCache(location).models()] == ["tiny"]
    for arguments, message in [
        (["prune", str(location)], "needs --older-than"),
        (["prune", str(location), "--model", "nope"], "no model 'nope'"),
    ]:
        result = runner.invoke(app, ["cache", *arguments])
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
    (tmp_path / "plain").mkdir()
    result = runner.invoke(app, ["cache", "stats", str(tmp_path / "plain")])
    assert result.exit_code == 2 and "no such cache" in result.output


def test_export_copies_a_sqlite_cache_under_the_same_keys(tmp_path):
    sqlite = PredictionCache(tmp_path / "cache.sqlite")
    run = sqlite.start_run("test")
    model = sqlite.register("tiny", DESCRIPTION, ["NEGATIVE", "POSITIVE"])
    values = texts(0, 700)
    sqlite.store(
        model, run, ((digest(t), p.tobytes(), len(t) > 17, None) for t, p in zip(values, probabilities(values))), []
    )
    sqlite.close()
    result = runner.invoke(app, ["cache", "export", str(tmp_path / "cache.sqlite"), str(tmp_path / "shared")])
    assert result.exit_code == 0 and "700 entries of 1 model key(s) copied" in result.output, result.output
    shared = SharedCache(tmp_path / "shared", create=False)
    found = shared.lookup(
        shared.register("tiny", DESCRIPTION, ["NEGATIVE", "POSITIVE"]), [digest(t) for t in values], 2
    )
    assert found.hit.all()  # the key a Ray run with the same model and options computes
    np.testing.assert_array_equal(found.probabilities, probabilities(values))
    result = runner.invoke(app, ["cache", "export", str(tmp_path / "shared"), str(tmp_path / "again")])
    assert result.exit_code == 2 and "export reads a SQLite cache file" in result.output


@pytest.mark.slow
def test_a_shared_cache_on_an_object_prefix(s3_env, monkeypatch):
    env, client = s3_env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = "nightly"
    location = f"s3://{bucket}/caches/nightly"
    cache = SharedCache(location)
    model = cache.register("tiny", DESCRIPTION, ["NEGATIVE", "POSITIVE"])
    add(cache, model.key, texts(0, 400))
    found = SharedCache(location, create=False).lookup(model, [digest(t) for t in texts(350, 450)], 2)
    assert found.hit.tolist() == [True] * 50 + [False] * 50
    stats = runner.invoke(app, ["cache", "stats", location])
    assert stats.exit_code == 0 and "400 entries, 1 model key(s)" in stats.output, stats.output
    client.put_object(Bucket=bucket, Key="photos/a.jpg", Body=b"\xff\xd8")
    with pytest.raises(CacheError, match="not a batchsent cache"):
        SharedCache(f"s3://{bucket}/photos")


def test_a_damaged_segment_is_named_and_prune_drops_it_keeping_the_rest(tmp_path):
    cache = SharedCache(tmp_path / "cache")
    model = cache.register("tiny", DESCRIPTION, ["NEGATIVE", "POSITIVE"])
    add(cache, model.key, texts(0, 2000))
    segments = sorted((tmp_path / "cache" / "entries" / model.key).rglob("*.parquet"))
    segments[0].write_bytes(segments[0].read_bytes()[:40])  # a segment cut short (a disk fault, a bad copy)
    asked = [digest(t) for t in texts(0, 2000)]
    with pytest.raises(CacheError, match=r"the segment entries/.*\.parquet is damaged .*cache prune"):
        SharedCache(tmp_path / "cache", create=False).lookup(model, asked, 2)
    result = runner.invoke(app, ["cache", "prune", str(tmp_path / "cache"), "--older-than", "3650d"])
    assert result.exit_code == 0, result.output
    assert not segments[0].exists()
    found = SharedCache(tmp_path / "cache", create=False).lookup(model, asked, 2)
    assert 0 < found.hit.sum() < 2000  # the damaged segment's entries are gone, every other one is kept
    np.testing.assert_array_equal(found.probabilities[found.hit], probabilities(texts(0, 2000))[found.hit])
