"""The seed's tokenization: the course's sentences give exactly the printed input_ids."""

from __future__ import annotations

import numpy as np
import pytest

COURSE_IDS = {
    "I've been waiting for a HuggingFace course my whole life.": [
        101,
        1045,
        1005,
        2310,
        2042,
        3403,
        2005,
        1037,
        17662,
        12172,
        2607,
        2026,
        2878,
        2166,
        1012,
        102,
    ],
    "I have been waiting for a HuggingFace course my whole life.": [
        101,
        1045,
        2031,
        2042,
        3403,
        2005,
        1037,
        17662,
        12172,
        2607,
        2026,
        2878,
        2166,
        1012,
        102,
    ],
    "I hate this so much!": [101, 1045, 5223, 2023, 2061, 2172, 999, 102],
}


@pytest.mark.parametrize(
    "first",
    [
        "I've been waiting for a HuggingFace course my whole life.",
        "I have been waiting for a HuggingFace course my whole life.",
    ],
)
def test_course_sentences_give_the_printed_ids_padded_with_zeros(binary_classifier, first):
    second = "I hate this so much!"
    chunk = binary_classifier.encode([first, second])
    (batch,) = chunk.batches
    inputs = binary_classifier._batch_inputs(chunk, batch)
    width = len(COURSE_IDS[first])
    rows = {int(position): i for i, position in enumerate(chunk.rows[batch])}
    ids = inputs["input_ids"]
    mask = inputs["attention_mask"]
    assert ids[rows[0]].tolist() == COURSE_IDS[first]
    assert ids[rows[1]].tolist() == COURSE_IDS[second] + [0] * (width - len(COURSE_IDS[second]))
    assert mask[rows[1]].tolist() == [1] * 8 + [0] * (width - 8)
    assert not chunk.truncated.any()


def test_stored_truncation_state_of_tokenizer_json_is_overridden(binary_classifier):
    # The packaged tokenizer.json was saved with truncation at 128 tokens; the model's limit is 512.
    chunk = binary_classifier.encode(["word " * 300])
    assert chunk.lengths.tolist() == [302]
    assert not chunk.truncated.any()


def test_encoded_ids_equal_the_transformers_tokenizer_call(binary_classifier):
    from conftest import varied_texts

    texts = varied_texts(40, seed=3)
    chunk = binary_classifier.encode(texts)
    expected = binary_classifier.tokenizer(texts, truncation=True, max_length=512)["input_ids"]
    for position, row in enumerate(chunk.rows):
        start, end = chunk.offsets[position], chunk.offsets[position + 1]
        assert chunk.flat_ids[start:end].tolist() == expected[row]
    assert np.array_equal(chunk.lengths, [len(expected[r]) for r in chunk.rows])
