"""batchsent: score text columns of CSV, TSV and Parquet files with a Hugging Face classifier.

Importing the package loads neither torch nor the CLI; ``Classifier`` does on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .api import score_dataframe, score_file
from .config import DEFAULT_MODEL, JobConfig
from .errors import (
    BatchsentError,
    ColumnNotFound,
    InputError,
    ModelLoadError,
    OutputError,
    ScoringError,
    UsageError,
)
from .job import RunSummary, run

if TYPE_CHECKING:
    from .model import Classifier

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "BatchsentError",
    "Classifier",
    "ColumnNotFound",
    "InputError",
    "JobConfig",
    "ModelLoadError",
    "OutputError",
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
