"""batchsent: score text columns of CSV, TSV and Parquet files with a Hugging Face classifier.

Importing the package loads neither torch nor the CLI; ``Classifier`` does on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # before the imports below: submodules read it

from batchsent.api import score_dataframe, score_file
from batchsent.cache.store import CacheError
from batchsent.engine.runner import run
from batchsent.engine.summary import ModelSummary, RunSummary
from batchsent.errors import (
    BatchsentError,
    ColumnNotFound,
    ExitCode,
    InputError,
    Interrupted,
    ModelLoadError,
    OutputError,
    PublishedWithErrors,
    ScoringError,
    UsageError,
)
from batchsent.settings.options import DEFAULT_MODEL, JobConfig, ModelOptions, ModelSpec

if TYPE_CHECKING:
    from batchsent.model.classifier import Classifier


__all__ = [
    "DEFAULT_MODEL",
    "BatchsentError",
    "CacheError",
    "Classifier",
    "ColumnNotFound",
    "ExitCode",
    "InputError",
    "Interrupted",
    "JobConfig",
    "ModelLoadError",
    "ModelOptions",
    "ModelSpec",
    "ModelSummary",
    "OutputError",
    "PublishedWithErrors",
    "RunSummary",
    "ScoringError",
    "UsageError",
    "run",
    "score_dataframe",
    "score_file",
]


def __getattr__(name: str) -> Any:
    if name == "Classifier":
        from batchsent.model.classifier import Classifier

        return Classifier
    raise AttributeError(f"module 'batchsent' has no attribute {name!r}")
