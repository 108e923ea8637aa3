"""Nothing lost, nobody in: paths that cannot destroy data, no code from model folders, a cache that is
never stale, and awkward input handled (one line, the right exit code, advice that works)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_model, fail_third_chunk, write_corpus
from typer.testing import CliRunner

from batchsent.cache.store import PredictionCache
from batchsent.cli import app
from batchsent.model.classifier import Classifier
from batchsent.state.checkpoint import Checkpoint

runner = CliRunner()


def one_error_line(result, code: int, *fragments: str) -> str:
    """The run ended with ``code`` and one ``error:`` line holding every fragment, and no traceback."""
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def score(*args: str, input: str | None = None):
    return runner.invoke(app, ["score", *map(str, args)], input=input)


# --- 1. every path a run writes differs from every other and from every input -------------------------------


@pytest.fixture
def reviews(tmp_path) -> Path:
    return write_corpus(tmp_path / "reviews.csv", 30, seed=3, longest_words=20)


def test_a_manifest_pointed_at_the_input_is_refused_and_the_input_kept(tmp_path, reviews, binary_model):
    before = reviews.read_bytes()
    result = score(reviews, "-o", tmp_path / "out.csv", "--model", binary_model, "--manifest", reviews)
    one_error_line(result, 2, "--manifest", "the input file", "never writes over its input")
    assert reviews.read_bytes() == before and not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    "case",
    [
        "manifest-is-output",
        "cache-is-manifest",
        "cache-is-output",
        "report-is-output",
        "manifest-through-symlink",
        "manifest-dot-slash",
        "cache-wal-is-output",
        "manifest-in-progress-folder",
        "report-in-model-folder",
    ],
)
def test_colliding_paths_are_refused_before_the_model_loads(tmp_path, reviews, case, monkeypatch):
    output, cache = tmp_path / "out.csv", tmp_path / "pc.sqlite"
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "link.csv").symlink_to(reviews)
    PredictionCache(cache).close()
    cache_bytes = cache.read_bytes()
    monkeypatch.chdir(tmp_path)
    extra = {
        "manifest-is-output": ["--manifest", output],
        "cache-is-manifest": ["--cache", cache, "--manifest", cache],
        "cache-is-output": ["--cache", output],
        "report-is-output": ["-o", tmp_path / "out.html", "--report", tmp_path / "out.html"],
        "manifest-through-symlink": ["--manifest", tmp_path / "link.csv"],
        "manifest-dot-slash": ["--manifest", "./reviews.csv"],
        "cache-wal-is-output": ["--cache", tmp_path / "x.sqlite", "-o", tmp_path / "x.sqlite-wal"],
        "manifest-in-progress-folder": ["--manifest", tmp_path / ".out.csv.batchsent" / "run.json"],
        "report-in-model-folder": ["--report", model / "report.html"],
    }[case]
    args = ["-o", output, *extra] if "-o" not in extra else extra
    # The model folder is empty: a run that got as far as loading it would fail with another message.
    result = score(reviews, "--model", model, *args)
    assert result.exit_code == 2, result.output
    assert "choose another path" in result.output or "outside it" in result.output, result.output
    assert "config.json" not in result.output
    assert cache.read_bytes() == cache_bytes and not output.exists() and not (tmp_path / "out.html").exists()


def test_the_output_written_over_the_cache_is_refused(tmp_path, reviews, binary_model):
    cache = tmp_path / "X"
    result = score(reviews, "--model", binary_model, "--cache", cache, "-o", tmp_path / "X.csv")
    assert result.exit_code == 0, result.output
    entries = PredictionCache(cache, create=False).stats()["entries"]
    result = score(reviews, "--model", binary_model, "--cache", cache, "-o", cache, "--overwrite")
    one_error_line(result, 2, "--output", "--cache")
    assert PredictionCache(cache, create=False).stats()["entries"] == entries > 0


def test_the_path_rule_holds_for_folder_runs_and_the_ray_engine(tmp_path, binary_model):
    folder = tmp_path / "exports"
    folder.mkdir()
    write_corpus(folder / "a.csv", 12, seed=1, longest_words=10)
    before = (folder / "a.csv").read_bytes()
    for engine in ("local", "ray"):
        result = score(
            folder,
            "-o",
            tmp_path / f"out-{engine}",
            "--model",
            binary_model,
            "--engine",
            engine,
            "--manifest",
            folder / "a.csv",
        )
        one_error_line(result, 2, "--manifest", "the input file", "never writes over its input")
        (tmp_path / f"out-{engine}").mkdir()
        inside = score(
            folder,
            "-o",
            tmp_path / f"out-{engine}",
            "--model",
            binary_model,
            "--engine",
            engine,
            "--report",
            tmp_path / f"out-{engine}" / "r.html",
        )
        one_error_line(inside, 2, "--report", "lies inside --output")
    assert (folder / "a.csv").read_bytes() == before


# --- 2. no code from a model folder unless asked ---------------------------------------------------------------

CONFIGURATION = """
import os
from pathlib import Path
from transformers import BertConfig
Path(os.environ["BATCHSENT_TEST_MARKER"]).write_text("ran")

class CustomConfig(BertConfig):
    model_type = "custom-bert"
"""
MODELING = """
from transformers import BertForSequenceClassification
from .configuration_custom import CustomConfig

class CustomModel(BertForSequenceClassification):
    config_class = CustomConfig
"""


@pytest.fixture(scope="module")
def custom_code_model(tiny_models, tmp_path_factory) -> Path:
    """The tiny 3-label BERT, its config mapped to code in the folder (which writes a marker when it runs)."""
    folder = tmp_path_factory.mktemp("custom") / "model"
    shutil.copytree(tiny_models["three"], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="custom-bert",
        architectures=["CustomModel"],
        auto_map={
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForSequenceClassification": "modeling_custom.CustomModel",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text(CONFIGURATION)
    (folder / "modeling_custom.py").write_text(MODELING)
    return folder


def _run_cli(args: list, tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "BATCHSENT_TEST_MARKER": str(tmp_path / "marker"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    return subprocess.run(
        [sys.executable, "-m", "batchsent", "score", *map(str, args)],
        input=stdin,
        text=True,
        capture_output=True,
        env=env,
        timeout=120,
    )


@pytest.mark.slow
def test_a_model_that_brings_its_own_code_is_refused_even_when_stdin_says_yes(tmp_path, reviews, custom_code_model):
    done = _run_cli([reviews, "-o", tmp_path / "out.csv", "--model", custom_code_model, "-q"], tmp_path, "y\ny\n")
    assert done.returncode == 2, done.stderr
    assert "[y/N]" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "auto_map" in errors[0] and "--trust-remote-code" in errors[0], done.stderr
    assert "configuration_custom.CustomConfig" in errors[0]
    assert not (tmp_path / "marker").exists() and not (tmp_path / "out.csv").exists()


@pytest.mark.slow
def test_trust_remote_code_runs_it_and_the_manifest_says_so(tmp_path, reviews, custom_code_model):
    done = _run_cli(
        [
            reviews,
            "-o",
            tmp_path / "out.csv",
            "--model",
            custom_code_model,
            "--trust-remote-code",
            "-q",
            "--manifest",
            tmp_path / "run.json",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "marker").read_text() == "ran"
    assert json.loads((tmp_path / "run.json").read_text())["options"]["trust_remote_code"] is True


def test_trust_remote_code_in_a_job_file_and_refused_by_default_from_python(tmp_path, reviews, custom_code_model):
    from batchsent import score_file
    from batchsent.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="trust-remote-code"):
        score_file(reviews, tmp_path / "py.csv", model=str(custom_code_model), quiet=True)
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{reviews}"\nmodel = "{custom_code_model}"\ntrust-remote-code = false\n')
    one_error_line(score("--config", job, "-o", tmp_path / "job.csv"), 2, "auto_map")


# --- 3. the cache and resume key a model folder by the content of its files ------------------------------------


def _same_size_other_weights(model: Path, seed: int) -> None:
    """Replace the folder's weights with another seed's (same size), keeping the old mtime (as cp -p does)."""
    weights = model / "model.safetensors"
    stat = weights.stat()
    other = build_tiny_model(model.parent / f"seed-{seed}", "binary", seed=seed) / "model.safetensors"
    assert other.stat().st_size == stat.st_size
    shutil.copyfile(other, weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_weights_replaced_with_the_same_size_and_mtime_are_not_served_from_the_cache(tmp_path, reviews, binary_model):
    model = tmp_path / "model"
    shutil.copytree(binary_model, model)
    cache = tmp_path / "pc.sqlite"
    assert score(reviews, "-o", tmp_path / "one.csv", "--model", model, "--cache", cache).exit_code == 0
    _same_size_other_weights(model, seed=7)
    second = score(reviews, "-o", tmp_path / "two.csv", "--model", model, "--cache", cache)
    assert second.exit_code == 0 and "from the cache" not in second.output, second.output
    fresh = score(reviews, "-o", tmp_path / "fresh.csv", "--model", model)
    assert fresh.exit_code == 0
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "fresh.csv").read_bytes()
    assert (tmp_path / "two.csv").read_bytes() != (tmp_path / "one.csv").read_bytes()


def test_resume_refuses_weights_replaced_with_the_same_size_and_mtime(tmp_path, binary_model, monkeypatch):
    source = write_corpus(tmp_path / "in.csv", 60, seed=4, longest_words=20)
    model = tmp_path / "model"
    shutil.copytree(binary_model, model)
    fail_third_chunk(monkeypatch, "boom")
    assert score(source, "-o", tmp_path / "out.csv", "--model", model, "--chunk-rows", "10").exit_code == 1
    monkeypatch.undo()
    _same_size_other_weights(model, seed=8)
    result = score(source, "-o", tmp_path / "out.csv", "--model", model, "--chunk-rows", "10", "--resume")
    one_error_line(result, 2, "cannot resume", "model.safetensors")


def test_a_folder_is_hashed_once_per_content(tmp_path, binary_model):
    from batchsent.state.identity import digest_memo_path, model_identity

    model = tmp_path / "model"
    shutil.copytree(binary_model, model)
    first = model_identity(str(model), None)
    with sqlite3.connect(digest_memo_path()) as memo:
        remembered = dict(memo.execute("SELECT path, sha256 FROM digests WHERE path LIKE ?", (f"{model.resolve()}/%",)))
    assert remembered == {str((model / name).resolve()): value for name, value in first["files"].items()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(first["files"])
    assert model_identity(str(model), None) == first


# --- 4. cache prune during a run --------------------------------------------------------------------------------


def test_a_prune_during_a_run_leaves_no_entry_without_its_key(tmp_path, binary_model, monkeypatch):
    source = write_corpus(tmp_path / "in.csv", 220, seed=5, longest_words=30)
    cache = tmp_path / "pr.cache"
    original, calls = Classifier.run, {"n": 0}

    def pruning(self, chunk, stop=None, on_batch=None):
        calls["n"] += 1
        if calls["n"] == 3:  # mid-run, as `batchsent cache prune pr.cache --model M` from another shell
            other = PredictionCache(cache, create=False)
            assert other.prune(model_names=[str(binary_model)])[1] == 1
            other.close()
        return original(self, chunk, stop, on_batch)

    monkeypatch.setattr(Classifier, "run", pruning)
    assert (
        score(
            source, "-o", tmp_path / "one.csv", "--model", binary_model, "--cache", cache, "--chunk-rows", "20"
        ).exit_code
        == 0
    )
    monkeypatch.undo()
    store = PredictionCache(cache, create=False)
    orphans = store.connection.execute("SELECT count(*) FROM predictions WHERE model NOT IN (SELECT id FROM models)")
    assert orphans.fetchone()[0] == 0
    stats = store.stats()
    assert stats["entries"] == sum(model["entries"] for model in stats["models"]) > 0
    store.close()
    truncated = score(
        source,
        "-o",
        tmp_path / "eight.csv",
        "--model",
        binary_model,
        "--cache",
        cache,
        "--max-length",
        "8",
        "--chunk-rows",
        "20",
    )
    assert truncated.exit_code == 0 and "from the cache" not in truncated.output, truncated.output
    plain = score(
        source, "-o", tmp_path / "plain.csv", "--model", binary_model, "--max-length", "8", "--chunk-rows", "20"
    )
    assert plain.exit_code == 0
    assert (tmp_path / "eight.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()


def test_entries_left_without_a_key_by_an_older_version_are_not_lent_to_a_new_key(tmp_path, reviews, binary_model):
    cache = tmp_path / "pc.sqlite"
    assert score(reviews, "-o", tmp_path / "one.csv", "--model", binary_model, "--cache", cache).exit_code == 0
    with sqlite3.connect(cache) as connection:  # what the old prune race left: entries whose key row is gone
        connection.execute("DELETE FROM models")
    result = score(reviews, "-o", tmp_path / "two.csv", "--model", binary_model, "--cache", cache, "--max-length", "8")
    assert result.exit_code == 0 and "from the cache" not in result.output, result.output


# --- 6. a ** glob through a symbolic link loop ------------------------------------------------------------------


def test_a_glob_does_not_follow_a_symlink_loop(tmp_path, binary_model):
    root = tmp_path / "loop"
    (root / "d").mkdir(parents=True)
    write_corpus(root / "d" / "reviews.csv", 18, seed=6, longest_words=10)
    (root / "d" / "up").symlink_to("..")
    result = score(f"{root}/**/*.csv", "-o", tmp_path / "out", "--model", binary_model)
    assert result.exit_code == 0, result.output
    assert "18 rows" in result.output
    assert [p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.csv")] == [Path("d/reviews.csv")]


# --- 7. a --max-length that cannot hold the special tokens ------------------------------------------------------


@pytest.mark.parametrize("length", ["1", "2"])
def test_a_max_length_with_no_room_for_text_is_refused(tmp_path, reviews, binary_model, length):
    result = score(reviews, "-o", tmp_path / "out.csv", "--model", binary_model, "--max-length", length)
    one_error_line(result, 2, f"--max-length {length}", "special tokens", "at least 3")
    assert not (tmp_path / "out.csv").exists()
    assert score(reviews, "-o", tmp_path / "ok.csv", "--model", binary_model, "--max-length", "3").exit_code == 0


# --- 8. reports of JSON Lines -----------------------------------------------------------------------------------


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_a_report_of_json_lines_output(tmp_path, binary_model):
    lines = [
        json.dumps({"id": i, "text": f"the movie was {'great' if i % 2 else 'boring'} {i}", "meta": {"n": [i]}})
        for i in range(12)
    ]
    source = _jsonl(tmp_path / "x.jsonl", [*lines, '{"id": 99, "text": null}'])
    result = score(source, "--model", binary_model, "--report", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    assert ("13" in page and "NEGATIVE" in page) or "POSITIVE" in page
    again = runner.invoke(app, ["report", str(tmp_path / "x.scored.jsonl"), "-o", str(tmp_path / "again.html")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.html").is_file()


# --- 9. advice that works ---------------------------------------------------------------------------------------


def test_bad_input_after_commits_advises_overwrite_and_that_works(tmp_path, binary_model):
    lines = [json.dumps({"id": i, "text": f"the plot was fine {i}"}) for i in range(300)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([*lines[:249], '{"id": 249, "text": 7}', *lines[250:]]) + "\n")
    output = tmp_path / "out.jsonl"
    result = score(source, "-o", output, "--model", binary_model, "--chunk-rows", "20")
    one_error_line(
        result, 1, "line 250", "holds a number", "240 rows are committed", "run the same command with --overwrite"
    )
    source.write_text("\n".join(lines) + "\n")  # fixed, as the advice says
    assert score(source, "-o", output, "--model", binary_model, "--chunk-rows", "20", "--resume").exit_code == 2
    assert score(source, "-o", output, "--model", binary_model, "--chunk-rows", "20", "--overwrite").exit_code == 0


@pytest.mark.parametrize("damage", ["part", "state"])
def test_damaged_progress_is_named_and_overwrite_starts_over(tmp_path, binary_model, monkeypatch, damage):
    source = write_corpus(tmp_path / "in.csv", 60, seed=4, longest_words=20)
    output = tmp_path / "out.csv"
    fail_third_chunk(monkeypatch, "boom")
    failed = score(source, "-o", output, "--model", binary_model, "--chunk-rows", "10")
    one_error_line(failed, 1, "20 rows are committed", "--resume")
    monkeypatch.undo()
    folder = Checkpoint(output).directory
    if damage == "part":
        (folder / "part-00000001.arrow").write_bytes(b"not arrow at all")
    else:
        state = folder / "state.json"
        state.write_bytes(state.read_bytes()[:40])
    for _attempt in range(2):  # the same answer every time, never a loop of tracebacks
        resumed = score(source, "-o", output, "--model", binary_model, "--chunk-rows", "10", "--resume")
        name = "part-00000001.arrow" if damage == "part" else "state.json"
        one_error_line(resumed, 2, str(folder), name, "damaged", "--overwrite")
    assert score(source, "-o", output, "--model", binary_model, "--chunk-rows", "10", "--overwrite").exit_code == 0


# --- 10 and 11. JSON Lines that is valid but awkward, and bad bytes on the right line ----------------------------


def _texts(count: int) -> list[str]:
    return [json.dumps({"id": i, "text": f"the plot was fine {i}"}) for i in range(count)]


def test_a_5000_digit_number_is_kept_as_written(tmp_path, binary_model):
    big = '{"id": ' + "9" * 5000 + ', "text": "a long number"}'
    source = _jsonl(tmp_path / "x.jsonl", [*_texts(3), big])
    result = score(source, "--model", binary_model)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.scored.jsonl").read_text().splitlines()[3].startswith(big[:-1])


@pytest.mark.parametrize(
    "line, what",
    [('{"id": 3, "text": "\\ud800 lone"}', "surrogate"), ("[" * 100_000 + "]" * 100_000, "nested too deeply")],
)
def test_awkward_json_lines_name_their_line(tmp_path, binary_model, line, what):
    source = _jsonl(tmp_path / "x.jsonl", [*_texts(3), line, *_texts(2)])
    one_error_line(score(source, "--model", binary_model), 2, "line 4", what)
    later = _jsonl(tmp_path / "later.jsonl", [*_texts(30), line])
    one_error_line(score(later, "--model", binary_model, "--chunk-rows", "10"), 1, "line 31", what, "--overwrite")


@pytest.mark.parametrize("bad_line, chunk_rows", [(4, 4096), (250, 20)])
def test_bad_utf8_in_json_lines_names_its_line(tmp_path, binary_model, bad_line, chunk_rows):
    lines = [line.encode() for line in _texts(300)]
    lines[bad_line - 1] = lines[bad_line - 1].replace(b"fine", b"fi\xffne")
    source = tmp_path / "x.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = score(source, "--model", binary_model, "--chunk-rows", str(chunk_rows))
    one_error_line(result, 2 if bad_line == 4 else 1, f"line {bad_line}:", "not valid UTF-8")


# --- 12. damaged caches and ages ---------------------------------------------------------------------------------


def test_cache_stats_of_a_damaged_cache_is_one_line(tmp_path, binary_model):
    source = write_corpus(tmp_path / "in.csv", 400, seed=2, longest_words=30)
    cache = tmp_path / "pc.sqlite"
    assert score(source, "-o", tmp_path / "out.csv", "--model", binary_model, "--cache", cache).exit_code == 0
    assert cache.stat().st_size > 4 * 4096
    with open(cache, "r+b") as damaged:
        damaged.seek(2 * 4096)
        damaged.write(b"\xa5" * 4096 * 2)
    for command in (["cache", "stats", str(cache)], ["cache", "prune", str(cache), "--older-than", "1d"]):
        result = runner.invoke(app, command)
        one_error_line(result, 2, str(cache))


@pytest.mark.parametrize("age", ["²d", "99999999999999999999d", "1" * 400 + "d", "d", "-1d"])
def test_a_bad_age_is_one_line(tmp_path, age):
    cache = tmp_path / "pc.sqlite"
    PredictionCache(cache).close()
    one_error_line(runner.invoke(app, ["cache", "prune", str(cache), "--older-than", age]), 2, "--older-than")


# --- 13. a folder file that disappears mid-run ------------------------------------------------------------------


def test_a_file_that_disappears_mid_run_counts_only_committed_rows(tmp_path, binary_model, monkeypatch):
    folder = tmp_path / "exports"
    folder.mkdir()
    for name in ("a", "b", "c"):
        write_corpus(folder / f"{name}.csv", 18, seed=ord(name), longest_words=10)
    original, calls = Classifier.run, {"n": 0}

    def vanishing(self, chunk, stop=None, on_batch=None):
        calls["n"] += 1
        if calls["n"] == 4:  # scoring b (chunks of 6 rows): c goes away
            (folder / "c.csv").unlink()
        return original(self, chunk, stop, on_batch)

    monkeypatch.setattr(Classifier, "run", vanishing)
    result = score(folder, "-o", tmp_path / "out", "--model", binary_model, "--chunk-rows", "6")
    one_error_line(result, 1, "c.csv", "no such file", "36 rows are committed")


# --- 14. smaller ones ----------------------------------------------------------------------------------------------


def test_a_missing_pair_column_names_its_own_option(tmp_path, reviews, binary_model):
    result = score(reviews, "--model", binary_model, "--pair-column", "missing", "-o", tmp_path / "o.csv")
    one_error_line(result, 2, "no column 'missing'", "(pick one with --pair-column)")


def test_a_model_name_with_a_space_says_what_a_name_is(tmp_path, reviews, binary_model):
    result = score(reviews, "--model", f"my model={binary_model}", "--model", f"b={binary_model}")
    one_error_line(result, 2, "'my model' cannot be a NAME", "letters, digits")


def test_a_template_with_another_placeholder_says_so(tmp_path, reviews, tiny_models):
    result = score(reviews, "--model", tiny_models["nli"], "--labels", "a,b", "--hypothesis-template", "fmt {0} {x}")
    one_error_line(result, 2, "{x} is not filled in", "{} marks where the label goes")


def test_cache_stats_of_a_plain_folder_says_there_is_no_cache(tmp_path):
    one_error_line(runner.invoke(app, ["cache", "stats", str(tmp_path)]), 2, "no such cache (neither a SQLite")
    (tmp_path / "notes.txt").write_text("hello")
    one_error_line(runner.invoke(app, ["cache", "stats", str(tmp_path)]), 2, "not a batchsent cache")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders; needs an unprivileged user")
def test_a_cache_in_a_read_only_folder_says_so(tmp_path, reviews, binary_model):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    result = score(reviews, "-o", tmp_path / "o.csv", "--model", binary_model, "--cache", folder / "pc.sqlite")
    one_error_line(result, 2, "not writable")


def test_an_empty_sqlite_file_of_another_application_is_not_taken_over(tmp_path, reviews, binary_model):
    other = tmp_path / "theirs.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("PRAGMA user_version = 7")
    result = score(reviews, "-o", tmp_path / "o.csv", "--model", binary_model, "--cache", other)
    one_error_line(result, 2, "theirs.sqlite")
    with sqlite3.connect(other) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 7
        assert connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def test_json_lines_line_endings_are_as_the_readme_says(tmp_path, binary_model):
    source = tmp_path / "x.jsonl"
    source.write_bytes(b'\xef\xbb\xbf{"text": "a fine film"}\r\n\r\n{"text": "boring"}\r\n')
    assert score(source, "--model", binary_model).exit_code == 0
    out = (tmp_path / "x.scored.jsonl").read_bytes()
    assert out.count(b"\n") == 2 and b"\r" not in out and not out.startswith(b"\xef\xbb\xbf")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "CRLF" in readme and "byte-order mark" in readme
