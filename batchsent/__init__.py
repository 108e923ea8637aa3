"""batchsent: score text columns of CSV, TSV and Parquet files with a Hugging Face classifier.

Importing the package loads neither torch nor the CLI; ``Classifier`` does on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # before the imports below: submodules read it

from .api import score_dataframe, score_file
from .cache import CacheError
from .errors import (
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
from .options import DEFAULT_MODEL, JobConfig, ModelOptions, ModelSpec
from .runner import run
from .summary import ModelSummary, RunSummary

if TYPE_CHECKING:
    from .model import Classifier


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
        from .model import Classifier

        return Classifier
    raise AttributeError(f"module 'batchsent' has no attribute {name!r}")
