"""With the real fixture classifier (MiniLM fine-tuned on SST-2), when ../shared has it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SEED_SENTENCES, SHARED_MODEL

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_MODEL.is_dir(), reason="../shared/models/minilm-sst2 is not present"),
]


@pytest.fixture(scope="module")
def real_classifier():
    from batchsent.model.classifier import Classifier

    return Classifier(str(SHARED_MODEL), device="cpu")


def test_seed_sentences_are_positive_then_negative(real_classifier):
    scores = real_classifier.predict(SEED_SENTENCES)
    labels = [real_classifier.labels[i] for i in scores.probabilities.argmax(1)]
    assert labels == ["POSITIVE", "NEGATIVE"]


def test_real_phrases_match_the_pipeline(real_classifier):
    from transformers import pipeline

    phrases = [
        line.split("\t")[0]
        for line in (SHARED_MODEL.parents[1] / "data" / "sst2-train.tsv").read_text().splitlines()[1:201]
    ]
    classify = pipeline("text-classification", model=str(SHARED_MODEL), device="cpu")
    expected = np.array(
        [
            [{r["label"]: r["score"] for r in row}[label] for label in real_classifier.labels]
            for row in classify(phrases, truncation=True, top_k=None, batch_size=1)
        ]
    )
    scores = real_classifier.predict(phrases)
    np.testing.assert_allclose(scores.probabilities, expected, rtol=0, atol=1e-5)
