"""The Python API, usable without the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from batchsent import ColumnNotFound, InputError, score_dataframe, score_file


def test_import_loads_neither_torch_nor_typer():
    code = "import sys, batchsent; print('torch' in sys.modules, 'typer' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == [
        "False",
        "False",
    ]


def test_score_dataframe_appends_columns_and_keeps_the_input(binary_classifier):
    df = pd.DataFrame({"text": ["a good film", None, "a bad film", float("nan"), "  "]}, index=[10, 20, 30, 40, 50])
    original = df.copy()
    scored = score_dataframe(df, classifier=binary_classifier, all_scores=True)
    pd.testing.assert_frame_equal(df, original)
    assert list(scored.columns) == [
        "text",
        "sentiment_label",
        "sentiment_score",
        "sentiment_score_NEGATIVE",
        "sentiment_score_POSITIVE",
    ]
    assert list(scored.index) == [10, 20, 30, 40, 50]
    assert scored["sentiment_label"].isna().tolist() == [False, True, False, True, True]
    expected = binary_classifier.predict(["a good film", "a bad film"]).probabilities
    np.testing.assert_allclose(scored.loc[[10, 30], ["sentiment_score_NEGATIVE", "sentiment_score_POSITIVE"]], expected)


def test_score_dataframe_errors(binary_classifier):
    with pytest.raises(ColumnNotFound, match="no column 'text'"):
        score_dataframe(pd.DataFrame({"review": ["x"]}), classifier=binary_classifier)
    with pytest.raises(InputError, match="holds int values, not text"):
        score_dataframe(pd.DataFrame({"text": [1, 2]}), classifier=binary_classifier)


def test_score_file_returns_the_summary(tmp_path, binary_classifier):
    source = tmp_path / "in.csv"
    source.write_text("text\nnice\n\nawful\n")
    summary = score_file(source, tmp_path / "out.parquet", classifier=binary_classifier)
    assert (summary.rows, summary.scored, summary.empty, summary.truncated) == (3, 2, 1, 0)
    assert sum(summary.label_counts.values()) == 2
    assert summary.line().startswith("3 rows: 2 scored, 1 empty, 0 truncated in ")
