"""Batch planning: pure, checked with Hypothesis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchsent.model.batching import padded_tokens, plan_batches

lengths_strategy = st.lists(st.integers(min_value=1, max_value=600), max_size=300)


@given(lengths_strategy, st.integers(1, 5000), st.integers(1, 100))
def test_every_row_once_and_order_restores(lengths, budget, max_rows):
    batches = plan_batches(lengths, budget, max_rows)
    positions = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert sorted(positions.tolist()) == list(range(len(lengths)))
    restored = np.empty(len(lengths), dtype=np.int64)
    restored[positions] = np.asarray(lengths, dtype=np.int64)[positions]
    assert restored.tolist() == list(lengths)


@given(lengths_strategy, st.integers(1, 5000), st.integers(1, 100))
def test_no_batch_exceeds_the_budget_except_a_lone_long_row(lengths, budget, max_rows):
    lengths_array = np.asarray(lengths, dtype=np.int64)
    for batch in plan_batches(lengths, budget, max_rows):
        assert 1 <= len(batch) <= max_rows
        padded = len(batch) * int(lengths_array[batch].max())
        assert padded <= budget or len(batch) == 1


@given(lengths_strategy, st.integers(1, 5000), st.integers(1, 100))
def test_rows_run_longest_first_so_padding_stays_small(lengths, budget, max_rows):
    batches = plan_batches(lengths, budget, max_rows)
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(lengths, reverse=True)
    assert padded_tokens(np.asarray(lengths), batches) >= sum(lengths)


def test_batches_fill_up_to_the_budget():
    batches = plan_batches([10] * 100, token_budget=200, max_rows=64)
    assert [len(b) for b in batches] == [20] * 5
    batches = plan_batches([10] * 100, token_budget=10_000, max_rows=64)
    assert [len(b) for b in batches] == [64, 36]


def test_invalid_budget_is_refused():
    with pytest.raises(ValueError):
        plan_batches([1, 2], token_budget=0, max_rows=1)
