"""The Ray engine's two scoring stages without a cluster: ``prepare_block`` (digests, cache hits and tokens as
list columns, in CPU tasks) then ``RayScorer`` (the model on those tokens) must give what the Classifier gives
on the same texts, in every mode: truncation, windows, zero-shot hypotheses, type ids, repeats and blanks,
several models sharing a tokenizer, blocks cut anywhere, and rows found in a shared cache."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pytest
from conftest import varied_texts
from families import FAMILIES, build_family_model
from pyarrow import fs

from batchsent.cache.shared import EntryWriter, SharedCache
from batchsent.data.storage import write_parquet_atomically
from batchsent.engine.ray import dataset as ray_dataset
from batchsent.engine.ray.scoring import RayScorer, cache_keys, prepare_block
from batchsent.engine.summary import RunTotals
from batchsent.model.classifier import Classifier
from batchsent.settings.options import ModelOptions, ScoringModel

TOLERANCE = 1e-5  # rows batched with other rows move in the last bits


def block(texts: list[str | None]) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(len(texts))], "text": pa.array(texts, pa.string())})


def texts_with_repeats(count: int, seed: int, longest_words: int = 200) -> list[str | None]:
    texts: list[str | None] = list(varied_texts(count, seed=seed, longest_words=longest_words))
    texts[3] = texts[1]  # a repeat
    texts[5], texts[7] = None, "   "  # blanks
    return texts


def scored(
    models: list[ScoringModel],
    texts: list[str | None],
    cache: str | None = None,
    cut: int | None = None,
    all_scores: bool = True,
) -> pa.Table:
    """The two stages as Ray runs them, the prepared blocks re-cut at ``cut`` rows (Ray re-bundles blocks)."""
    keys = cache_keys(models, cache) if cache is not None else None
    prepared = prepare_block(block(texts), models, "text", cache, keys, run=uuid.uuid4().hex)
    scorer = RayScorer(models, "text", all_scores, cache, keys)
    cut = cut or len(texts)
    return pa.concat_tables([scorer(prepared.slice(start, cut)) for start in range(0, len(texts), cut)])


def probabilities(table: pa.Table, prefix: str, labels: list[str]) -> np.ndarray:
    return np.stack([table.column(f"{prefix}score_{label}").to_numpy(zero_copy_only=False) for label in labels], axis=1)


def assert_like_the_classifier(table: pa.Table, model: ScoringModel, texts: list[str | None]) -> Classifier:
    classifier = Classifier(model.options)
    expected = classifier.predict(texts)
    got = probabilities(table, model.prefix, classifier.labels)
    np.testing.assert_allclose(got, expected.probabilities, atol=TOLERANCE)  # NaN rows (blanks) equal too
    assert table.column(ray_dataset.truncated_column(0)).to_pylist() == expected.truncated.tolist()
    return classifier


@pytest.mark.parametrize("kind", ["binary", "three", "multi"])
@pytest.mark.parametrize("cut", [None, 7])
def test_truncated_rows_match_the_classifier(tiny_models, kind, cut):
    texts = texts_with_repeats(40, seed=1, longest_words=700)
    model = ScoringModel(None, "s_", ModelOptions(model=str(tiny_models[kind]), max_length=64))
    table = scored([model], texts, cut=cut)
    assert table.column("id").to_pylist() == [str(i) for i in range(len(texts))]
    assert not [name for name in table.column_names if name.startswith(("__batchsent_tokens", "__batchsent_over"))]
    assert_like_the_classifier(table, model, texts)


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_windows_match_the_classifier(tiny_models, aggregate):
    texts = texts_with_repeats(30, seed=2, longest_words=300)
    model = ScoringModel(
        None,
        "s_",
        ModelOptions(model=str(tiny_models["binary"]), max_length=32, long_text="chunk", stride=8, aggregate=aggregate),
    )
    table = scored([model], texts, cut=11)
    classifier = assert_like_the_classifier(table, model, texts)
    expected = classifier.predict(texts)
    windows = table.column("s_chunks").to_numpy(zero_copy_only=False)
    assert np.array_equal(np.nan_to_num(windows), expected.windows)


def test_zero_shot_hypotheses_match_the_classifier(tiny_models):
    texts = texts_with_repeats(20, seed=3, longest_words=60)
    model = ScoringModel(None, "z_", ModelOptions(model=str(tiny_models["nli"]), labels="praise,complaint,question"))
    assert_like_the_classifier(scored([model], texts, cut=6), model, texts)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_matches_the_classifier(tmp_path, family):
    texts = texts_with_repeats(24, seed=4, longest_words=90)
    folder = build_family_model(tmp_path / family, family, [t for t in texts if t])
    model = ScoringModel(None, "s_", ModelOptions(model=str(folder)))
    assert_like_the_classifier(scored([model], texts, cut=10), model, texts)


def test_models_sharing_a_tokenizer_share_one_token_column(tiny_models):
    texts = texts_with_repeats(30, seed=5)
    models = [
        ScoringModel("a", "a_", ModelOptions(model=str(tiny_models["binary"]), max_length=48)),
        ScoringModel("b", "b_", ModelOptions(model=str(tiny_models["three"]), max_length=48)),
    ]
    prepared = prepare_block(block(texts), models, "text", None, None)
    tokenizers = {Classifier(m.options, weights=False).encoding_key for m in models}
    assert len([n for n in prepared.column_names if n.startswith("__batchsent_tokens_")]) == len(tokenizers)
    table = scored(models, texts, cut=9)
    for index, model in enumerate(models):
        classifier = Classifier(model.options)
        np.testing.assert_allclose(
            probabilities(table, model.prefix, classifier.labels),
            classifier.predict(texts).probabilities,
            atol=TOLERANCE,
        )
        assert (
            table.column(ray_dataset.truncated_column(index)).to_pylist()
            == classifier.predict(texts).truncated.tolist()
        )


def test_rows_the_cache_holds_are_not_tokenized_and_come_back_equal(tiny_models, tmp_path):
    location = str(tmp_path / "cache")
    SharedCache(location).start_run("test")
    model = ScoringModel(None, "s_", ModelOptions(model=str(tiny_models["binary"]), max_length=64))
    texts = texts_with_repeats(40, seed=6, longest_words=300)
    first = scored([model], texts[:25], cache=location)  # a first run: its part merged, its entries added
    first = first.append_column(ray_dataset.FILE, pa.array(np.zeros(25, np.int32))).append_column(
        ray_dataset.ROW, pa.array(np.arange(25))
    )
    write_parquet_atomically(fs.LocalFileSystem(), str(tmp_path / "parts" / "000000"), "000000000000.parquet", first)
    entries = EntryWriter(SharedCache(location, create=False), 1_800_000_000)
    schema = block(texts[:25]).schema
    added = ray_dataset.added_fields(str(tmp_path / "parts"), 1, [schema])
    ray_dataset.merge_parts(
        str(tmp_path / "parts"),
        0,
        "in.csv",
        schema,
        added,
        ["s_label"],
        tmp_path / "merged.csv",
        25,
        RunTotals(),
        entries,
    )
    entries.flush()
    assert entries.written == len({t for t in texts[:25] if t and t.strip()})

    keys = cache_keys([model], location)
    prepared = prepare_block(block(texts), [model], "text", location, keys, run="second")
    hits = prepared.column(ray_dataset.cache_column("hit", 0)).to_numpy(zero_copy_only=False)
    assert hits.tolist() == [bool(t and t.strip()) and t in texts[:25] for t in texts]
    tokens = prepared.column("__batchsent_tokens_0").is_valid().to_numpy(zero_copy_only=False)
    assert not (tokens & hits).any()  # a hit is never tokenized
    table = scored([model], texts, cache=location, cut=13)
    assert table.column(ray_dataset.cache_column("hit", 0)).to_pylist() == hits.tolist()
    assert_like_the_classifier(table, model, texts)


@pytest.mark.parametrize("with_cache", [False, True])
def test_text_pairs_match_the_classifier(tiny_models, tmp_path, with_cache):
    texts = texts_with_repeats(30, seed=7, longest_words=120)
    pairs: list[str | None] = list(varied_texts(30, seed=8, longest_words=60))
    pairs[3], pairs[9], texts[12] = pairs[1], None, texts[11]  # a repeated pair, a blank pair, a text with two pairs
    model = ScoringModel(None, "s_", ModelOptions(model=str(tiny_models["three"]), max_length=48))
    location = None
    if with_cache:
        location = str(tmp_path / "cache")
        SharedCache(location).start_run("test")
    keys = cache_keys([model], location, pairs=True) if location else None
    table = block(texts).append_column("pair", pa.array(pairs, pa.string()))
    prepared = prepare_block(table, [model], "text", location, keys, run="pairs", pair_column="pair")
    scorer = RayScorer([model], "text", True, location, keys, pair_column="pair")
    got = pa.concat_tables([scorer(prepared.slice(start, 8)) for start in range(0, len(texts), 8)])
    classifier = Classifier(model.options)
    expected = classifier.predict(texts, pairs)
    np.testing.assert_allclose(probabilities(got, "s_", classifier.labels), expected.probabilities, atol=TOLERANCE)
    assert np.isnan(expected.probabilities[9]).all() and got.column("s_label")[9].as_py() is None
    if with_cache:
        assert keys[0].key != cache_keys([model], location)[0].key  # a pair's entry is never a text's alone
