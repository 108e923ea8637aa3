"""Several models in one pass: each model's columns equal its single run; names, collisions, resume, cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import fail_third_chunk, relabelled, write_corpus
from test_cli import bad, invoke

from batchsent import ModelSpec, score_file
from batchsent.errors import ScoringError
from batchsent.model.classifier import Classifier

TOLERANCE = 1e-5  # a multi-model run batches each model's rows as its single run does, up to shared tokens
KINDS = {"sentiment": "binary", "stars": "three", "emotion": "multi"}  # 2-label, 3-label, multi-label


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "reviews.csv", 300, seed=5, longest_words=120)


def named(tiny_models, *names: str) -> list[str]:
    return [f"{name}={tiny_models[KINDS[name]]}" for name in names]


def assert_same_columns(multi, single, prefix: str) -> None:
    """Labels identical, every score within TOLERANCE (nulls where the other has nulls)."""
    columns = [name for name in single.column_names if name.startswith(prefix)]
    assert columns and all(name in multi.column_names for name in columns)
    for name in columns:
        got, expected = multi[name].to_pylist(), single[name].to_pylist()
        if name.endswith("_label"):
            assert got == expected, name
        else:
            assert [v is None for v in got] == [v is None for v in expected], name
            np.testing.assert_allclose(
                [v for v in got if v is not None], [v for v in expected if v is not None], atol=TOLERANCE, err_msg=name
            )


def test_each_model_equals_its_single_run(tiny_models, corpus, tmp_path):
    summary = score_file(
        corpus,
        tmp_path / "multi.parquet",
        models=named(tiny_models, "sentiment", "stars", "emotion"),
        all_scores=True,
        chunk_rows=64,
        max_length=48,
        quiet=True,
    )
    multi = pq.read_table(summary.output)
    assert multi.column_names[:2] == ["id", "text"]
    assert multi.column_names[2:] == [
        "sentiment_label",
        "sentiment_score",
        "sentiment_score_NEGATIVE",
        "sentiment_score_POSITIVE",
        "stars_label",
        "stars_score",
        "stars_score_negative",
        "stars_score_neutral",
        "stars_score_positive",
        "emotion_label",
        "emotion_score",
        "emotion_score_joy",
        "emotion_score_anger",
        "emotion_score_surprise",
    ]
    for name, kind in KINDS.items():
        single = score_file(
            corpus,
            tmp_path / f"{name}.parquet",
            model=str(tiny_models[kind]),
            prefix=f"{name}_",
            all_scores=True,
            chunk_rows=64,
            max_length=48,
            quiet=True,
        )
        assert_same_columns(multi, pq.read_table(single.output), f"{name}_")
        counts = next(model for model in summary.models if model.name == name)
        assert counts.label_counts == single.label_counts and counts.truncated == single.truncated
    assert summary.label_counts == {} and [model.name for model in summary.models] == list(KINDS)
    assert "sentiment: NEGATIVE" in summary.line() and "; emotion: " in summary.line()


def test_models_sharing_a_tokenizer_tokenize_each_chunk_once(tiny_models, corpus, tmp_path, monkeypatch):
    calls = []
    original = Classifier.tokenized

    def counted(self, texts, pairs=None):
        calls.append(self.name)
        return original(self, texts, pairs)

    monkeypatch.setattr(Classifier, "tokenized", counted)
    score_file(
        corpus,
        tmp_path / "shared.csv",
        models=named(tiny_models, "sentiment", "stars", "emotion"),
        chunk_rows=100,
        quiet=True,
    )
    assert len(calls) == 3  # three chunks, one tokenization each for the three models
    calls.clear()
    other_limit = ModelSpec("stars", str(tiny_models["three"]), (("max_length", 16),))  # other truncation: other tokens
    score_file(
        corpus,
        tmp_path / "two-groups.csv",
        models=[*named(tiny_models, "sentiment", "emotion"), other_limit],
        chunk_rows=100,
        quiet=True,
    )
    assert sorted(calls).count(str(tiny_models["three"])) == 3 and len(calls) == 6


def test_job_file_models_with_their_own_options(tiny_models, corpus, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(f'''input = "{corpus}"
output = "{tmp_path / "out.parquet"}"
chunk_rows = 50
all_scores = true

[[models]]
name = "sentiment"
model = "{tiny_models["binary"]}"
batch-size = 4

[[models]]
name = "stars"
model = "{tiny_models["three"]}"
max_length = 16
token_budget = 256
''')
    result = invoke("--config", job, "-q")
    assert result.exit_code == 0, result.stderr
    multi = pq.read_table(tmp_path / "out.parquet")
    for name, options in (("sentiment", {"batch_size": 4}), ("stars", {"max_length": 16, "token_budget": 256})):
        single = score_file(
            corpus,
            tmp_path / f"{name}.parquet",
            model=str(tiny_models[KINDS[name]]),
            prefix=f"{name}_",
            all_scores=True,
            chunk_rows=50,
            quiet=True,
            **options,
        )
        assert_same_columns(multi, pq.read_table(single.output), f"{name}_")
    assert "stars: " in result.stderr and "truncated" in result.stderr.split("stars: ")[1]


def test_names_and_collisions_are_refused_before_any_model_loads(tiny_models, corpus, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(Classifier, "__init__", no_loading)
    binary, three = tiny_models["binary"], tiny_models["three"]
    bad(invoke(corpus, "--model", f"a={binary}", "--model", f"a={three}"), 2, "the name 'a' is given twice")
    bad(
        invoke(corpus, "--model", f"a={binary}", "--model", str(three)),
        2,
        "--model: give one MODEL, or NAME=MODEL for each of several models",
    )
    bad(
        invoke(corpus, "--model", f"a={binary}", "--model", f"b={three}", "--prefix", "x_"),
        2,
        "--prefix is for a single model",
    )
    bad(
        invoke(corpus, "--model", f"a={binary}", "--model", f"b={three}", "--revision", "v1"),
        2,
        "--revision is for a single model",
    )
    bad(invoke(corpus, "--model", "a=", "--model", f"b={three}"), 2, "give the model after a=")
    clashing = tmp_path / "clashing.csv"
    clashing.write_text("text,stars_label\nfine,kept\n")
    bad(
        invoke(clashing, "--model", f"sentiment={binary}", "--model", f"stars={three}"),
        2,
        "already has column(s) 'stars_label'; choose another NAME in --model NAME=MODEL",
    )
    bad(
        invoke(
            corpus, "--model", f"a={binary}", "--model", f"b={three}", "--long-text", "chunk", "--pair-column", "id"
        ),
        2,
        "model a: --pair-column cannot be combined with --long-text chunk",
    )
    job = tmp_path / "job.toml"
    job.write_text(f'[[models]]\nname = "a"\nmodel = "{binary}"\nthreads = 2\n')
    bad(invoke(corpus, "--config", job), 2, "[[models]] a: unknown key 'threads'")
    job.write_text(f'[[models]]\nname = "a"\nmodel = "{binary}"\ndtype = "fp8"\n')
    bad(invoke(corpus, "--config", job), 2, "model a: --dtype 'fp8'")
    job.write_text('[[models]]\nmodel = "x"\n')
    bad(invoke(corpus, "--config", job), 2, "each [[models]] table needs name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clashing.csv", "job.toml", "reviews.csv"]


def test_columns_of_two_models_that_would_collide_are_refused(tiny_models, corpus, tmp_path):
    labelled = relabelled(tiny_models["binary"], tmp_path / "labelled", ["label", "other"])
    # model "a" with --all-scores writes a_score_label; model "a_score" writes a_score_label too
    bad(
        invoke(corpus, "--model", f"a={labelled}", "--model", f"a_score={tiny_models['three']}", "--all-scores"),
        2,
        "models a and a_score would both write the column 'a_score_label'",
    )
    assert not (tmp_path / "reviews.scored.csv").exists()


def test_a_plain_model_flag_replaces_the_job_files_models(tiny_models, corpus, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(f'[[models]]\nname = "a"\nmodel = "{tiny_models["three"]}"\n')
    result = invoke(corpus, "--config", job, "--model", tiny_models["binary"], "-o", tmp_path / "out.parquet", "-q")
    assert result.exit_code == 0, result.stderr
    assert pq.read_table(tmp_path / "out.parquet").column_names[-2:] == ["sentiment_label", "sentiment_score"]


def test_a_multi_model_run_resumes_to_the_same_bytes(tiny_models, corpus, tmp_path, monkeypatch):
    options = {"models": named(tiny_models, "sentiment", "stars"), "chunk_rows": 40, "all_scores": True, "quiet": True}
    reference = score_file(corpus, tmp_path / "reference.parquet", **options).output
    output = tmp_path / "resumed.parquet"
    with monkeypatch.context() as patched:
        fail_third_chunk(patched, "out of memory")  # the third model run: the second chunk's first model
        with pytest.raises(ScoringError, match="the model sentiment failed: RuntimeError: out of memory"):
            score_file(corpus, output, **options)
    assert not output.exists()
    manifest = tmp_path / "manifest.json"
    summary = score_file(corpus, output, resume=True, manifest=manifest, **options)
    assert summary.resumed_rows == 40 and output.read_bytes() == reference.read_bytes()
    facts = json.loads(manifest.read_text())
    assert facts["model"] is None and [entry["name"] for entry in facts["models"]] == ["sentiment", "stars"]
    assert sum(facts["models"][1]["label_counts"].values()) == 300 and facts["models"][1]["labels"]["2"] == "positive"
    with monkeypatch.context() as patched:
        fail_third_chunk(patched, "again")
        with pytest.raises(ScoringError):
            score_file(corpus, output, overwrite=True, **options)
    changed = {**options, "models": named(tiny_models, "sentiment", "emotion")}
    result = invoke(
        corpus,
        "-o",
        output,
        "--resume",
        *(f"--model={m}" for m in changed["models"]),
        "--chunk-rows",
        "40",
        "--all-scores",
    )
    bad(result, 2, "cannot resume: options.models")


def test_the_cache_serves_every_model(tiny_models, corpus, tmp_path):
    options = {"models": named(tiny_models, "sentiment", "emotion"), "cache": tmp_path / "cache.sqlite", "quiet": True}
    first = score_file(corpus, tmp_path / "first.parquet", **options)
    assert all(model.cached == 0 for model in first.models)
    added = {**options, "models": named(tiny_models, "sentiment", "emotion", "stars")}
    second = score_file(corpus, tmp_path / "second.parquet", **added)
    scored = {model.name: model.cached for model in second.models}
    assert scored["sentiment"] == scored["emotion"] == second.scored and scored["stars"] == 0  # repeats hit too
    assert_same_columns(pq.read_table(second.output), pq.read_table(first.output), "sentiment_")
    assert_same_columns(pq.read_table(second.output), pq.read_table(first.output), "emotion_")


def test_a_folder_with_several_models(tiny_models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_corpus(folder / "a.csv", 60, seed=1, longest_words=30)
    write_corpus(folder / "b.csv", 40, seed=2, longest_words=30)
    summary = score_file(folder, tmp_path / "out", models=named(tiny_models, "sentiment", "stars"), quiet=True)
    assert summary.rows == 100 and [model.name for model in summary.models] == ["sentiment", "stars"]
    assert sum(summary.models[1].label_counts.values()) == 100
    for name in ("a.csv", "b.csv"):
        header = next(csv.reader((tmp_path / "out" / name).open()))
        assert header == ["id", "text", "sentiment_label", "sentiment_score", "stars_label", "stars_score"]


def test_the_report_shows_each_model_and_how_often_models_with_the_same_labels_agree(tiny_models, corpus, tmp_path):
    from conftest import build_tiny_model

    from batchsent.report.stats import ReportOptions, collect_models

    other_stars = build_tiny_model(tmp_path / "other-stars", "three", seed=7)
    models = [*named(tiny_models, "sentiment", "stars"), f"stars2={other_stars}"]
    report = tmp_path / "report.html"
    result = invoke(corpus, *(f"--model={m}" for m in models), "-o", tmp_path / "out.parquet", "--report", report, "-q")
    assert result.exit_code == 0, result.stderr
    html = report.read_text()
    for heading in (
        "Model sentiment",
        "Model stars",
        "Model stars2",
        "sentiment: Labels",
        "stars2: Scores by label",
        "Agreement between models",
    ):
        assert heading in html, heading
    table = pq.read_table(tmp_path / "out.parquet")
    same = sum(a == b for a, b in zip(table["stars_label"].to_pylist(), table["stars2_label"].to_pylist()))
    found = collect_models(tmp_path / "out.parquet", ReportOptions(prefixes=("sentiment_", "stars_", "stars2_")))
    assert [(a.first, a.second) for a in found.agreements] == [("stars_", "stars2_")]  # sentiment's labels differ
    assert found.agreements[0].agreed == same and found.agreements[0].rows == table.num_rows
    assert f"{same / table.num_rows:.1%}" in html and 0 < same < table.num_rows
    again = invoke_report(
        tmp_path / "out.parquet", "--prefix", "stars_", "--prefix", "stars2_", "-o", tmp_path / "r.html"
    )
    assert again.exit_code == 0 and "Agreement between models" in (tmp_path / "r.html").read_text()


def invoke_report(*args):
    from test_cli import runner

    from batchsent.cli import app

    return runner.invoke(app, ["report", *map(str, args)])


def test_an_interrupted_folder_run_with_several_models_resumes_with_every_models_counts(
    tiny_models, tmp_path, monkeypatch
):
    folder = tmp_path / "in"
    folder.mkdir()
    write_corpus(folder / "a.csv", 30, seed=1, longest_words=30)
    write_corpus(folder / "b.csv", 30, seed=2, longest_words=30)
    options = {"models": named(tiny_models, "sentiment", "stars"), "chunk_rows": 10, "quiet": True}
    reference = score_file(folder, tmp_path / "reference", **options)
    with monkeypatch.context() as patched:
        fail_third_chunk(patched, "disk on fire")
        with pytest.raises(ScoringError):
            score_file(folder, tmp_path / "out", **options)
    with monkeypatch.context() as patched:  # a.csv (3 chunks, 6 model runs) finishes; b.csv fails in its first chunk
        calls = {"n": 0}
        original = Classifier.run

        def failing(self, chunk, stop=None, on_batch=None):
            calls["n"] += 1
            if calls["n"] == 8:
                raise RuntimeError("disk on fire")
            return original(self, chunk, stop, on_batch)

        patched.setattr(Classifier, "run", failing)
        with pytest.raises(ScoringError):
            score_file(folder, tmp_path / "out", resume=True, **options)
    summary = score_file(folder, tmp_path / "out", resume=True, **options)
    assert summary.resumed_rows == 40  # a.csv finished, and b.csv's first chunk committed
    assert [(m.name, m.label_counts, m.truncated) for m in summary.models] == [
        (m.name, m.label_counts, m.truncated) for m in reference.models
    ]
    for name in ("a.csv", "b.csv"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()


def test_pairs_and_zero_shot_models_in_one_pass_equal_their_single_runs(tiny_models, tmp_path):
    import pyarrow as pa
    from conftest import varied_texts

    texts = varied_texts(120, seed=9, longest_words=80)
    source = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"q": texts, "a": texts[::-1]}), source)
    pairs = score_file(
        source,
        tmp_path / "pairs.parquet",
        models=named(tiny_models, "sentiment", "stars"),
        column="q",
        pair_column="a",
        all_scores=True,
        chunk_rows=50,
        quiet=True,
    )
    for name in ("sentiment", "stars"):
        single = score_file(
            source,
            tmp_path / f"{name}-pair.parquet",
            model=str(tiny_models[KINDS[name]]),
            prefix=f"{name}_",
            column="q",
            pair_column="a",
            all_scores=True,
            chunk_rows=50,
            quiet=True,
        )
        assert_same_columns(pq.read_table(pairs.output), pq.read_table(single.output), f"{name}_")
    topic = {"name": "topic", "model": str(tiny_models["nli"]), "labels": "billing,refund,praise", "multi_label": True}
    mixed = score_file(
        source,
        tmp_path / "mixed.parquet",
        models=[*named(tiny_models, "sentiment"), topic],
        column="q",
        all_scores=True,
        chunk_rows=50,
        quiet=True,
    )
    single = score_file(
        source,
        tmp_path / "topic.parquet",
        model=str(tiny_models["nli"]),
        labels="billing,refund,praise",
        multi_label=True,
        prefix="topic_",
        column="q",
        all_scores=True,
        chunk_rows=50,
        quiet=True,
    )
    assert_same_columns(pq.read_table(mixed.output), pq.read_table(single.output), "topic_")
    assert [model.name for model in mixed.models] == ["sentiment", "topic"]
