"""--long-text chunk: windows over every token, aggregated per row."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import SHARED_MODEL, WORDS, varied_texts
from hypothesis import given
from hypothesis import strategies as st

from batchsent.errors import UsageError
from batchsent.model.batching import window_spans
from batchsent.model.classifier import Classifier
from batchsent.model.postprocess import aggregate_windows


@st.composite
def window_cases(draw):
    size = draw(st.integers(1, 600))
    return draw(st.integers(0, 5000)), size, draw(st.integers(0, size - 1))


@given(window_cases())
def test_windows_cover_every_token_as_specified(case):
    tokens, size, stride = case
    spans = window_spans(tokens, size, stride)
    assert spans[0][0] == 0 and spans[-1][1] == tokens
    for (start, end), (next_start, _next_end) in itertools.pairwise(spans):
        assert end - start == size  # only the last window may be short
        assert next_start - start == size - stride  # consecutive windows share exactly `stride` tokens
        assert end - next_start == stride and end < tokens
    assert all(0 <= end - start <= size for start, end in spans)
    covered = np.zeros(tokens, dtype=int)
    for start, end in spans:
        covered[start:end] += 1
    assert (covered >= 1).all()


def naive_aggregate(probabilities, owners, rows, how):
    result = []
    for row in range(rows):
        mine = probabilities[owners == row]
        if how == "mean":
            result.append(mine.mean(axis=0))
        elif how == "first":
            result.append(mine[0])
        else:
            result.append(mine[int(np.argmax(mine.max(axis=1)))])
    return np.array(result)


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=20), st.sampled_from(["mean", "max", "first"]), st.integers(0, 99)
)
def test_aggregation_matches_a_plain_loop(windows_per_row, how, seed):
    owners = np.repeat(np.arange(len(windows_per_row)), windows_per_row)
    probabilities = np.random.default_rng(seed).dirichlet([1, 1, 1], size=len(owners)).astype(np.float32)
    expected = naive_aggregate(probabilities, owners, len(windows_per_row), how)
    np.testing.assert_allclose(aggregate_windows(probabilities, owners, len(windows_per_row), how), expected, atol=1e-6)


def test_encoded_windows_are_valid_inputs_that_cover_the_text(binary_model):
    classifier = Classifier(str(binary_model), device="cpu", max_length=16, long_text="chunk", stride=4)
    text = " ".join(WORDS[:45])
    full = classifier.tokenizer(text, add_special_tokens=False)["input_ids"]
    chunk = classifier.encode([text])
    windows = [chunk.flat_ids[chunk.offsets[i] : chunk.offsets[i + 1]].tolist() for i in range(len(chunk.lengths))]
    assert all(w[0] == 101 and w[-1] == 102 and len(w) <= 16 for w in windows)
    expected = [full[s:e] for s, e in window_spans(len(full), 14, 4)]
    assert [w[1:-1] for w in windows] == expected
    assert chunk.truncated.tolist() == [True]


def test_short_rows_score_the_same_in_both_modes(binary_model):
    texts = varied_texts(40, seed=6)
    truncate = Classifier(str(binary_model), device="cpu").predict(texts)
    chunk = Classifier(str(binary_model), device="cpu", long_text="chunk").predict(texts)
    short = ~truncate.truncated
    assert short.any() and (~short).any()
    np.testing.assert_allclose(chunk.probabilities[short], truncate.probabilities[short], rtol=0, atol=1e-6)
    assert (chunk.windows[short] == 1).all() and (chunk.windows[~short] >= 2).all()
    assert chunk.truncated.tolist() == truncate.truncated.tolist()


def test_option_checks():
    with pytest.raises(UsageError, match="--stride and --aggregate need --long-text chunk"):
        Classifier("unused", long_text="truncate", stride=10)
    with pytest.raises(UsageError, match="--aggregate 'median'"):
        Classifier("unused", long_text="chunk", aggregate="median")
    with pytest.raises(UsageError, match="--stride must be zero or positive"):
        Classifier("unused", long_text="chunk", stride=-1)
    with pytest.raises(UsageError, match="--long-text 'split'"):
        Classifier("unused", long_text="split")


def test_stride_must_leave_room_in_the_window(binary_model):
    with pytest.raises(UsageError, match="--stride 14 must be smaller than a window's 14 text tokens"):
        Classifier(str(binary_model), device="cpu", max_length=16, long_text="chunk", stride=14)


@pytest.mark.skipif(not SHARED_MODEL.is_dir(), reason="../shared/models/minilm-sst2 is not present")
def test_decisive_text_past_token_512_changes_the_label():
    praise = "a warm , funny and wonderful film with great performances . " * 50  # ~600 tokens
    verdict = "but the ending is a dull , tedious and stupid mess that ruins everything . " * 120
    text = praise + verdict
    truncate = Classifier(str(SHARED_MODEL), device="cpu").predict([text])
    chunk = Classifier(str(SHARED_MODEL), device="cpu", long_text="chunk").predict([text])
    labels = ["NEGATIVE", "POSITIVE"]
    assert labels[int(truncate.probabilities[0].argmax())] == "POSITIVE"
    assert labels[int(chunk.probabilities[0].argmax())] == "NEGATIVE"
    assert truncate.truncated[0] and chunk.windows[0] >= 4


def test_tail_decides_with_a_tiny_model_too(binary_model):
    """Without ../shared: a long head of one label then a longer tail of the other, on the tiny model.

    Head and tail are short texts repeated past the limit, picked (seeded, so the case
    is fixed) as the ones the tiny model labels most confidently each way; truncation
    sees only the head, chunking sees mostly the tail.
    """
    chunking = Classifier(str(binary_model), device="cpu", long_text="chunk")
    truncating = Classifier(str(binary_model), device="cpu")

    def repeated(text: str, tokens: int) -> str:
        return " ".join([text] * (tokens // len(text.split()) + 1))

    candidates = varied_texts(80, seed=11, longest_words=30)
    positive = truncating.predict([repeated(t, 600) for t in candidates]).probabilities[:, 1]
    head, tail = candidates[int(np.argmax(positive))], candidates[int(np.argmin(positive))]
    assert positive.max() > 0.5 > positive.min()
    text = repeated(head, 600) + " " + repeated(tail, 3000)
    cut, windows = truncating.predict([text]), chunking.predict([text])
    assert cut.truncated[0] and windows.windows[0] >= 5
    assert cut.probabilities[0].argmax() == 1 and windows.probabilities[0].argmax() == 0


@pytest.mark.slow
def test_a_huge_cell_is_scored_in_bounded_memory(tmp_path, binary_model):
    small, huge = tmp_path / "small.csv", tmp_path / "huge.csv"
    small.write_text("text\nshort review\n")
    huge.write_text('text\n"' + ("a long review of a film that never ends . " * 25_000) + '"\nshort review\n')
    assert huge.stat().st_size > 1_000_000

    def peak_rss(source):
        command = [
            sys.executable,
            "-m",
            "batchsent",
            "score",
            str(source),
            "--model",
            str(binary_model),
            "-q",
            "--long-text",
            "chunk",
            "-o",
            str(source.with_suffix(".out.parquet")),
        ]
        process = subprocess.Popen(command, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(process.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, process.stderr.read()
        return usage.ru_maxrss * 1024

    baseline, loaded = peak_rss(small), peak_rss(huge)
    assert loaded - baseline < 400 * 2**20
    import pyarrow.parquet as pq

    chunks = pq.read_table(huge.with_suffix(".out.parquet")).column("sentiment_chunks").to_pylist()
    assert chunks[0] > 400 and chunks[1] == 1
