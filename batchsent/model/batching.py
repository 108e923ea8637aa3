"""Batch planning: which rows run together.

Pure and torch-free so it can be property-tested. Rows are sorted by token length
(longest first) so each batch pads only to its own longest row, and a batch is capped
by its padded size (rows x longest row) as well as by a row count: short rows run in
large batches, long rows in small ones, and memory per batch stays predictable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_batches(lengths: Sequence[int] | np.ndarray, token_budget: int, max_rows: int) -> list[np.ndarray]:
    """Split row positions into batches, longest rows first.

    Returns arrays of positions into ``lengths``; together they hold every position
    exactly once. Each batch has at most ``max_rows`` rows and at most
    ``token_budget`` padded tokens, except a single row longer than the budget,
    which runs alone.
    """
    if token_budget < 1 or max_rows < 1:
        raise ValueError("token_budget and max_rows must be positive")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_rows, token_budget // longest))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    """Tokens the model processes for this plan, padding included."""
    return int(sum(len(batch) * int(lengths[batch].max()) for batch in batches if len(batch)))


def window_spans(tokens: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) spans of windows of ``size`` tokens overlapping by ``stride`` tokens.

    The first window starts at 0, each next one ``size - stride`` later, and the last
    ends at ``tokens`` (it may be shorter); a sequence that fits gives one window.
    """
    if size < 1 or not 0 <= stride < size:
        raise ValueError("need size >= 1 and 0 <= stride < size")
    spans = []
    start = 0
    while True:
        end = min(start + size, tokens)
        spans.append((start, end))
        if end >= tokens:
            return spans
        start += size - stride
