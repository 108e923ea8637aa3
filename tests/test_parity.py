"""Every probability equals transformers.pipeline on the same model (our reference)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import MODEL_KINDS, varied_texts

from batchsent.model.classifier import Classifier

TOLERANCE = 1e-5


def pipeline_probabilities(model_dir, texts: list[str], labels: list[str]) -> np.ndarray:
    """The seed's way, one text at a time (no padding): rows of probabilities in label order."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model_dir), device="cpu")
    results = classify(texts, truncation=True, top_k=None, batch_size=1)
    return np.array([[{r["label"]: r["score"] for r in row}[label] for label in labels] for row in results])


@pytest.fixture(scope="module")
def references(tiny_models):
    texts = varied_texts(60, seed=1)
    cache = {}
    for kind, directory in tiny_models.items():
        cache[kind] = pipeline_probabilities(directory, texts, MODEL_KINDS[kind][1])
    return texts, cache


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
@pytest.mark.parametrize(("batch_size", "token_budget"), [(1, 8192), (7, 8192), (64, 8192), (64, 600), (32, 1)])
def test_probabilities_match_the_pipeline(tiny_models, references, kind, batch_size, token_budget):
    texts, expected = references
    classifier = Classifier(str(tiny_models[kind]), device="cpu", batch_size=batch_size, token_budget=token_budget)
    order = list(range(len(texts)))
    random.Random(batch_size).shuffle(order)
    scores = classifier.predict([texts[i] for i in order])
    reference = expected[kind][order]
    assert scores.probabilities.shape == reference.shape
    np.testing.assert_allclose(scores.probabilities, reference, rtol=0, atol=TOLERANCE)
    margin = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else None
    decided = np.ones(len(texts), bool) if margin is None else (margin[:, 1] - margin[:, 0]) > 2 * TOLERANCE
    assert (scores.probabilities.argmax(1) == reference.argmax(1))[decided].all()


def test_long_rows_are_truncated_and_counted(binary_classifier):
    texts = varied_texts(60, seed=1)
    scores = binary_classifier.predict(texts)
    lengths = [len(binary_classifier.tokenizer(t)["input_ids"]) for t in texts]
    assert scores.truncated.tolist() == [n > 512 for n in lengths]
    assert 0 < scores.truncated.sum() < len(texts)


def test_max_length_matches_the_pipeline_at_the_same_length(binary_model):
    from transformers import pipeline

    texts = varied_texts(20, seed=2)
    classifier = Classifier(str(binary_model), device="cpu", max_length=16)
    classify = pipeline("text-classification", model=str(binary_model), device="cpu")
    results = classify(texts, truncation=True, max_length=16, top_k=None)
    expected = np.array(
        [[{r["label"]: r["score"] for r in row}[label] for label in classifier.labels] for row in results]
    )
    scores = classifier.predict(texts)
    np.testing.assert_allclose(scores.probabilities, expected, rtol=0, atol=TOLERANCE)
    assert scores.truncated.sum() > 0


def test_blank_texts_give_nan_rows_and_do_not_shift_others(binary_classifier):
    texts = ["a good film", None, "", "   \n\t", "a bad film"]
    scores = binary_classifier.predict(texts)
    assert scores.blank.tolist() == [False, True, True, True, False]
    assert np.isnan(scores.probabilities[1:4]).all()
    alone = binary_classifier.predict(["a good film", "a bad film"]).probabilities
    np.testing.assert_allclose(scores.probabilities[[0, 4]], alone, atol=TOLERANCE)
