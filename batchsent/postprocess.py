"""Logits -> probabilities -> output columns, by the text-classification pipeline's rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

SOFTMAX = "softmax"
SIGMOID = "sigmoid"
IDENTITY = "none"


def activation_for(config: Any) -> str:
    """The function the transformers pipeline applies to this model's logits.

    Regression models keep raw outputs; multi-label and one-label models get a sigmoid;
    other single-label models a softmax (same order of checks as the pipeline).
    """
    problem_type = getattr(config, "problem_type", None)
    num_labels = getattr(config, "num_labels", 2)
    if problem_type == "regression":
        return IDENTITY
    if problem_type == "multi_label_classification" or num_labels == 1:
        return SIGMOID
    if problem_type == "single_label_classification" or num_labels > 1:
        return SOFTMAX
    return getattr(config, "function_to_apply", None) or IDENTITY


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Apply ``activation`` row-wise in float32, with the pipeline's numerics."""
    outputs = np.asarray(logits, dtype=np.float32)
    if activation == SIGMOID:
        return 1.0 / (1.0 + np.exp(-outputs))
    if activation == SOFTMAX:
        shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if activation == IDENTITY:
        return outputs
    raise ValueError(f"unknown activation {activation!r}")


def column_names(labels: Sequence[str], prefix: str, all_scores: bool) -> list[str]:
    """Names of the prediction columns, in output order."""
    names = [f"{prefix}label", f"{prefix}score"]
    if all_scores:
        names += [f"{prefix}score_{label}" for label in labels]
    return names


def output_fields(labels: Sequence[str], prefix: str, all_scores: bool) -> list[pa.Field]:
    """Arrow fields of the prediction columns: a string label, then float32 scores."""
    names = column_names(labels, prefix, all_scores)
    return [pa.field(names[0], pa.string())] + [pa.field(name, pa.float32()) for name in names[1:]]


def prediction_arrays(probabilities: np.ndarray, labels: Sequence[str], all_scores: bool) -> list[pa.Array]:
    """Columns for ``probabilities`` (rows x labels; NaN rows are blank texts -> nulls).

    The label is the argmax (first on ties, as the pipeline) and the score its value.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    blank = np.isnan(probabilities).all(axis=1) if probabilities.size else np.zeros(len(probabilities), bool)
    best = np.argmax(np.where(blank[:, None], 0.0, probabilities), axis=1)
    label_values = np.asarray(labels, dtype=object)[best] if len(labels) else np.array([], dtype=object)
    arrays = [
        pa.array(label_values, type=pa.string(), mask=blank),
        pa.array(probabilities[np.arange(len(best)), best], type=pa.float32(), mask=blank),
    ]
    if all_scores:
        arrays += [pa.array(probabilities[:, i], type=pa.float32(), mask=blank) for i in range(len(labels))]
    return arrays
