"""Python entry points for scripts and notebooks: score a file or a DataFrame."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchsent.engine.local.job import Progress
from batchsent.engine.runner import run
from batchsent.engine.summary import RunSummary
from batchsent.errors import ColumnNotFound, InputError
from batchsent.model.postprocess import column_names, prediction_arrays
from batchsent.settings.options import DEFAULT_MODEL, JobConfig

if TYPE_CHECKING:
    import pandas as pd

    from batchsent.model.classifier import Classifier


def score_file(
    input: str | Path,
    output: str | Path | None = None,
    *,
    classifier: Classifier | list[Classifier] | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> RunSummary:
    """Score a CSV/TSV/JSON Lines/Parquet file, a folder or glob of them, or s3://, gs://, az:// objects;
    ``options`` are JobConfig fields (column, model, prefix, manifest, cache...).

    The same job as ``batchsent score``: see ``batchsent.run`` for signals, manifest and report.
    """
    config = JobConfig(input=input, output=output, **options)  # strings: paths, or object URLs kept as they are
    return run(config, progress=progress, classifier=classifier)


def score_dataframe(
    df: pd.DataFrame,
    column: str = "text",
    *,
    classifier: Classifier | None = None,
    model: str = DEFAULT_MODEL,
    prefix: str = "sentiment_",
    all_scores: bool = False,
    **classifier_options: Any,
) -> pd.DataFrame:
    """A copy of ``df`` with the prediction columns appended (``df`` itself is not changed).

    Pass a loaded ``classifier`` to reuse it; otherwise ``model`` is loaded with
    ``classifier_options`` (device, batch_size, max_length...).
    """
    if column not in df.columns:
        raise ColumnNotFound(f"no column {column!r}; the DataFrame has {', '.join(map(repr, df.columns))}")
    texts = [_text_or_none(value, column) for value in df[column].tolist()]
    if classifier is None:
        from batchsent.model.classifier import Classifier

        classifier = Classifier(model, **classifier_options)
    scores = classifier.predict(texts)
    arrays = prediction_arrays(scores.probabilities, classifier.labels, all_scores, scores.windows)
    names = column_names(classifier.labels, prefix, all_scores, scores.windows is not None)
    result = df.copy()
    for name, array in zip(names, arrays, strict=True):
        result[name] = array.to_numpy(zero_copy_only=False)
    return result


def _text_or_none(value: Any, column: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    if type(value).__name__ in {"NAType", "NaTType"}:
        return None
    raise InputError(f"column {column!r} holds {type(value).__name__} values, not text")
