"""Activation rules and output columns follow the text-classification pipeline."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from transformers.pipelines.text_classification import sigmoid as pipeline_sigmoid
from transformers.pipelines.text_classification import softmax as pipeline_softmax

from batchsent.model.postprocess import activate, activation_for, column_names, prediction_arrays


@pytest.mark.parametrize(
    ("problem_type", "num_labels", "expected"),
    [
        (None, 2, "softmax"),
        ("single_label_classification", 3, "softmax"),
        (None, 1, "sigmoid"),
        ("multi_label_classification", 3, "sigmoid"),
        ("regression", 1, "none"),
    ],
)
def test_activation_rules(problem_type, num_labels, expected):
    assert activation_for(SimpleNamespace(problem_type=problem_type, num_labels=num_labels)) == expected


def test_activations_equal_the_pipeline_functions():
    logits = np.random.default_rng(0).normal(scale=8, size=(50, 3)).astype(np.float32)
    np.testing.assert_array_equal(activate(logits, "softmax"), pipeline_softmax(logits))
    np.testing.assert_array_equal(activate(logits, "sigmoid"), pipeline_sigmoid(logits))
    np.testing.assert_array_equal(activate(logits, "none"), logits)


def test_prediction_arrays_take_the_argmax_and_null_blank_rows():
    probabilities = np.array([[0.2, 0.8], [np.nan, np.nan], [0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    label, score, negative, positive = prediction_arrays(probabilities, ["NEG", "POS"], all_scores=True)
    assert label.to_pylist() == ["POS", None, "NEG", "NEG"]
    assert score.null_count == 1 and score[0].as_py() == pytest.approx(0.8)
    assert negative.to_pylist()[1] is None and positive[3].as_py() == pytest.approx(0.1)


def test_column_names():
    assert column_names(["NEG", "POS"], "sentiment_", False) == ["sentiment_label", "sentiment_score"]
    assert column_names(["NEG", "POS"], "p_", True) == ["p_label", "p_score", "p_score_NEG", "p_score_POS"]
