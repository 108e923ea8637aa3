"""Text pairs (--pair-column) and zero-shot labels (--labels), against the transformers pipelines."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import WORDS
from typer.testing import CliRunner

from batchsent import score_file
from batchsent.cli import app
from batchsent.model.classifier import Classifier

runner = CliRunner()
TOLERANCE = 1e-5


def short_texts(count: int, seed: int) -> list[str]:
    """Texts short enough for the pipelines, which do not truncate pairs."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(count)]


@pytest.fixture(scope="module")
def pair_rows():
    texts, pairs = short_texts(40, seed=1), short_texts(40, seed=2)
    texts[3], pairs[7], pairs[8] = None, None, "   "
    pairs[10], texts[11], pairs[11] = pairs[12], texts[12], pairs[12]  # a repeated pair
    return texts, pairs


def test_pairs_equal_the_pipeline_with_text_pair_dicts(tiny_models, pair_rows, tmp_path):
    from transformers import pipeline

    model = tiny_models["three"]
    texts, pairs = pair_rows
    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"question": texts, "answer": pairs}), source)
    summary = score_file(
        source,
        tmp_path / "out.parquet",
        model=str(model),
        column="question",
        pair_column="answer",
        all_scores=True,
        token_budget=300,
        quiet=True,
    )
    assert (summary.rows, summary.empty) == (40, 3)
    table = pq.read_table(tmp_path / "out.parquet")
    pipe = pipeline("text-classification", model=str(model), tokenizer=str(model), top_k=None, device="cpu")
    labels = ["negative", "neutral", "positive"]
    for row, (text, pair) in enumerate(zip(texts, pairs, strict=True)):
        if text is None or pair is None or not pair.strip():
            assert table["sentiment_label"][row].as_py() is None
            continue
        expected = {r["label"]: r["score"] for r in pipe({"text": text, "text_pair": pair})}
        got = [table[f"sentiment_score_{label}"][row].as_py() for label in labels]
        np.testing.assert_allclose(got, [expected[label] for label in labels], atol=TOLERANCE)


def test_a_pair_is_not_its_text_alone_and_the_cache_keys_both(tiny_models, pair_rows, tmp_path):
    texts, pairs = pair_rows
    model = str(tiny_models["three"])
    alone = Classifier(model, device="cpu").predict(texts[:3]).probabilities
    paired = Classifier(model, device="cpu").predict(texts[:3], pairs[:3]).probabilities
    assert np.abs(alone - paired).max() > 1e-3
    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"text": texts, "pair": pairs}), source)
    cache = tmp_path / "cache.sqlite"
    options = {"model": model, "pair_column": "pair", "cache": cache, "quiet": True}
    first = score_file(source, tmp_path / "a.parquet", **options)
    assert first.duplicates == 1
    pq.write_table(pa.table({"text": texts, "pair": [p if i != 0 else p + "!" for i, p in enumerate(pairs)]}), source)
    second = score_file(source, tmp_path / "b.parquet", **options)
    assert second.cached == second.scored - 1  # only the changed pair is scored again
    solo = score_file(source, tmp_path / "c.parquet", model=model, cache=cache, quiet=True)
    assert solo.cached == 0  # the text alone is another key


@pytest.mark.parametrize("multi_label", [False, True])
def test_zero_shot_equals_the_pipeline(tiny_models, tmp_path, multi_label):
    from transformers import pipeline

    model = str(tiny_models["nli"])
    texts = short_texts(30, seed=3)
    texts[4] = None
    labels = ["billing", "shipping", "refund", "praise", "bug report"]
    template = "This review is about {}."
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    summary = score_file(
        source,
        tmp_path / "out.jsonl",
        model=model,
        labels=",".join(labels),
        hypothesis_template=template,
        multi_label=multi_label,
        all_scores=True,
        prefix="topic_",
        token_budget=512,
        quiet=True,
    )
    assert (summary.rows, summary.empty) == (30, 1)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    pipe = pipeline("zero-shot-classification", model=model, tokenizer=model, device="cpu")
    for text, row in zip(texts, rows, strict=True):
        if text is None:
            assert row["topic_label"] is None
            continue
        result = pipe(text, candidate_labels=labels, hypothesis_template=template, multi_label=multi_label)
        expected = dict(zip(result["labels"], result["scores"], strict=True))
        np.testing.assert_allclose(
            [row[f"topic_score_{label}"] for label in labels], [expected[label] for label in labels], atol=TOLERANCE
        )
        top, second = sorted(expected.values(), reverse=True)[:2]
        if top - second > 1e-4:
            assert row["topic_label"] == result["labels"][0]
        if not multi_label:
            assert abs(sum(row[f"topic_score_{label}"] for label in labels) - 1) < 1e-5


def test_zero_shot_runs_every_pair_of_a_chunk_through_one_batch_plan(tiny_models):
    classifier = Classifier(str(tiny_models["nli"]), device="cpu", labels="a,b,c", token_budget=4096)
    chunk = classifier.encode(short_texts(20, seed=5))
    assert chunk.hypotheses == 3 and len(chunk.lengths) == 60
    assert sum(len(b) for b in chunk.batches) == 60 and len(chunk.batches) < 20  # not one batch per text


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--labels", "a,b", "--model", "{binary}"], "names no entailment label"),
        (["--labels", " , ", "--model", "{nli}"], "give at least one label"),
        (
            ["--labels", "a,b", "--hypothesis-template", "About this", "--model", "{nli}"],
            "has no {} where the label goes",
        ),
        (["--multi-label", "--model", "{nli}"], "need --labels"),
        (["--pair-column", "missing", "--model", "{binary}"], "no column 'missing'"),
        (["--pair-column", "id", "--model", "{binary}"], "column 'id' holds int64, not text"),
        (["--pair-column", "text", "--model", "{binary}"], "is the text column itself"),
        (
            ["--pair-column", "other", "--long-text", "chunk", "--model", "{binary}"],
            "cannot be combined with --long-text",
        ),
        (["--pair-column", "other", "--labels", "a", "--model", "{nli}"], "cannot be combined with --labels"),
    ],
)
def test_bad_pairs_and_labels_are_one_line_and_exit_2(tiny_models, tmp_path, arguments, message):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": ["good", "bad"], "other": ["x", "y"]}), source)
    filled = [a.format(binary=tiny_models["binary"], nli=tiny_models["nli"]) for a in arguments]
    result = runner.invoke(app, ["score", str(source), *filled])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not (tmp_path / "in.scored.parquet").exists()


def test_a_pair_column_in_json_lines(tiny_models, tmp_path):
    source = tmp_path / "qa.jsonl"
    source.write_text('{"q": "is it good", "a": "yes very", "n": 1}\n{"q": "and this", "a": null}\n')
    summary = score_file(source, None, model=str(tiny_models["three"]), column="q", pair_column="a", quiet=True)
    assert (summary.rows, summary.scored) == (2, 1)
    first, second = [json.loads(line) for line in summary.output.read_text().splitlines()]
    assert list(first)[:3] == ["q", "a", "n"] and first["sentiment_label"] is not None
    assert second["sentiment_label"] is None
    expected = (
        Classifier(str(tiny_models["three"]), device="cpu").predict(["is it good"], ["yes very"]).probabilities[0]
    )
    assert abs(first["sentiment_score"] - float(expected.max())) < TOLERANCE
