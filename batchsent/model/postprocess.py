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


def column_names(labels: Sequence[str], prefix: str, all_scores: bool, chunked: bool = False) -> list[str]:
    """Names of the prediction columns, in output order (``<prefix>chunks`` last when chunking)."""
    names = [f"{prefix}label", f"{prefix}score"]
    if all_scores:
        names += [f"{prefix}score_{label}" for label in labels]
    if chunked:
        names.append(f"{prefix}chunks")
    return names


def output_fields(labels: Sequence[str], prefix: str, all_scores: bool, chunked: bool = False) -> list[pa.Field]:
    """Arrow fields of the prediction columns: a string label, float32 scores, an int32 window count."""
    names = column_names(labels, prefix, all_scores, chunked)
    types = [pa.string()] + [pa.float32()] * (len(names) - 1 - chunked) + [pa.int32()] * chunked
    return [pa.field(name, value_type) for name, value_type in zip(names, types, strict=True)]


def prediction_arrays(
    probabilities: np.ndarray, labels: Sequence[str], all_scores: bool, windows: np.ndarray | None = None
) -> list[pa.Array]:
    """Columns for ``probabilities`` (rows x labels; NaN rows are blank texts -> nulls).

    The label is the argmax (first on ties, as the pipeline) and the score its value;
    ``windows`` (chunk mode) adds the number of windows each row was scored in.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    blank = np.isnan(probabilities).all(axis=1) if probabilities.size else np.zeros(len(probabilities), bool)
    best = np.argmax(np.where(blank[:, None], 0.0, probabilities), axis=1)
    arrays = [
        _label_names(labels).take(_from_numpy(best.astype(np.int64), pa.int64(), blank)),
        _from_numpy(probabilities[np.arange(len(best)), best], pa.float32(), blank),
    ]
    if all_scores:
        arrays += [_from_numpy(probabilities[:, i], pa.float32(), blank) for i in range(len(labels))]
    if windows is not None:
        arrays.append(_from_numpy(windows.astype(np.int32), pa.int32(), blank))
    return arrays


# The prediction columns are built from buffers: ``pa.array(...)`` imports pandas on its
# first call (pyarrow checks for a Series), 0.2 s of every run's fixed cost for nothing.


def _label_names(labels: Sequence[str]) -> pa.Array:
    """The label names as an Arrow string array."""
    encoded = [label.encode("utf-8") for label in labels]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(name) for name in encoded], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    )


def _from_numpy(values: np.ndarray, arrow_type: pa.DataType, nulls: np.ndarray) -> pa.Array:
    """A numeric Arrow array over ``values`` with ``nulls`` masked."""
    values = np.ascontiguousarray(values, dtype=arrow_type.to_pandas_dtype())
    validity = pa.py_buffer(np.packbits(~nulls, bitorder="little")) if nulls.any() else None
    return pa.Array.from_buffers(arrow_type, len(values), [validity, pa.py_buffer(values)], null_count=int(nulls.sum()))


def aggregate_windows(probabilities: np.ndarray, owners: np.ndarray, rows: int, how: str) -> np.ndarray:
    """One row of probabilities per owner from the windows of long texts.

    ``owners[i]`` is the row (0..rows-1) window ``i`` belongs to; windows of a row come
    in text order and every row has at least one. ``mean`` averages the windows'
    probabilities, ``max`` takes the window whose top probability is highest (the most
    confident decides), ``first`` takes the first window.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if how == "mean":
        sums = np.zeros((rows, probabilities.shape[1]), dtype=np.float64)
        np.add.at(sums, owners, probabilities)
        return (sums / np.bincount(owners, minlength=rows)[:, None]).astype(np.float32)
    if how == "first":
        _, first = np.unique(owners, return_index=True)
        return probabilities[first]
    if how == "max":
        confidence = probabilities.max(axis=1)
        order = np.lexsort((-confidence, owners))  # by owner, most confident first
        _, first = np.unique(owners[order], return_index=True)
        return probabilities[order[first]]
    raise ValueError(f"unknown aggregation {how!r}")
