"""JobConfig: every option of a scoring job, merged defaults < job file < flags.

The built-in default model is the seed's Hub id; ``BATCHSENT_MODEL`` replaces that
default, a ``--config`` TOML job file overrides both, and command-line flags override
the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .backends import check_backend_options
from .device import check_device_name, check_dtype_name
from .errors import UsageError
from .postprocess import AGGREGATIONS
from .precision import check_precision_options

DEFAULT_MODEL = "distilbert-base-uncased-finetuned-sst-2-english"
DEFAULT_CHUNK_ROWS = 4096
MODEL_ENV = "BATCHSENT_MODEL"


LONG_TEXT_MODES = ("truncate", "chunk")
DEFAULT_STRIDE = 64


def check_long_text_options(long_text: str, stride: int | None, aggregate: str | None) -> tuple[str, int, str]:
    """Validate ``--long-text``, ``--stride`` and ``--aggregate``; fill chunk-mode defaults."""
    if long_text not in LONG_TEXT_MODES:
        raise UsageError(f"--long-text {long_text!r}: expected truncate or chunk")
    if long_text != "chunk" and (stride is not None or aggregate is not None):
        raise UsageError("--stride and --aggregate need --long-text chunk")
    if aggregate is not None and aggregate not in AGGREGATIONS:
        raise UsageError(f"--aggregate {aggregate!r}: expected mean, max or first")
    if stride is not None and stride < 0:
        raise UsageError(f"--stride must be zero or positive, got {stride}")
    return long_text, DEFAULT_STRIDE if stride is None else stride, aggregate or "mean"


@dataclass(frozen=True)
class JobConfig:
    """One scoring job. ``output`` None means ``<input stem>.scored<suffix>`` beside the input;
    ``batch_size`` and ``token_budget`` None mean the device's defaults (see device.py)."""

    input: Path
    output: Path | None = None
    column: str = "text"
    model: str = DEFAULT_MODEL
    revision: str | None = None
    batch_size: int | None = None
    token_budget: int | None = None
    max_length: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    prefix: str = "sentiment_"
    all_scores: bool = False
    overwrite: bool = False
    quiet: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    long_text: str = "truncate"
    stride: int | None = None
    aggregate: str | None = None
    backend: str = "torch"
    quantize: str | None = None
    precision: str | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "token_budget", "chunk_rows", "max_length", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
        check_device_name(self.device)
        check_dtype_name(self.dtype)
        check_long_text_options(self.long_text, self.stride, self.aggregate)
        check_precision_options(self.precision, self.dtype, self.quantize, self.backend)
        check_backend_options(self.backend, self.quantize, self.dtype)
        if self.stride is not None and self.max_length is not None and self.stride >= self.max_length:
            raise UsageError(f"--stride {self.stride} must be smaller than the window (--max-length {self.max_length})")

    def classifier_options(self) -> dict[str, Any]:
        """The keyword arguments of ``Classifier`` (besides the model) that this job sets."""
        names = ("revision", "device", "dtype", "max_length", "batch_size", "token_budget", "threads",
                 "long_text", "stride", "aggregate", "backend", "quantize", "precision")  # fmt: skip
        return {name: getattr(self, name) for name in names}

    @property
    def output_path(self) -> Path:
        if self.output is not None:
            return self.output
        return self.input.with_name(f"{self.input.stem}.scored{self.input.suffix}")


_PATH_KEYS = {"input", "output"}
_KEY_TYPES: dict[str, tuple[type, ...]] = {
    "input": (str,),
    "output": (str,),
    "column": (str,),
    "model": (str,),
    "revision": (str,),
    "batch_size": (int,),
    "token_budget": (int,),
    "max_length": (int,),
    "device": (str,),
    "dtype": (str,),
    "threads": (int,),
    "prefix": (str,),
    "all_scores": (bool,),
    "overwrite": (bool,),
    "quiet": (bool,),
    "chunk_rows": (int,),
    "long_text": (str,),
    "stride": (int,),
    "aggregate": (str,),
    "backend": (str,),
    "quantize": (str,),
    "precision": (str,),
    "resume": (bool,),
}
assert set(_KEY_TYPES) == {f.name for f in fields(JobConfig)}


def read_job_file(path: Path) -> dict[str, Any]:
    """Options from a TOML job file; relative paths in it are taken from the file's folder."""
    try:
        with open(path, "rb") as stream:
            raw = tomllib.load(stream)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"--config {path}: {error}") from error
    options: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        expected = _KEY_TYPES.get(name)
        if expected is None:
            known = ", ".join(sorted(k.replace("_", "-") for k in _KEY_TYPES))
            raise UsageError(f"--config {path}: unknown key {key!r}; known keys: {known}")
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            raise UsageError(f"--config {path}: {key} must be {expected[0].__name__}, got {value!r}")
        options[name] = (path.parent / Path(value).expanduser()) if name in _PATH_KEYS else value
    return options


def build_config(
    flags: Mapping[str, Any], job_file: Path | None = None, environ: Mapping[str, str] = os.environ
) -> JobConfig:
    """Merge defaults, ``BATCHSENT_MODEL``, the job file and flags (None = not given)."""
    options: dict[str, Any] = {}
    if environ.get(MODEL_ENV):
        options["model"] = environ[MODEL_ENV]
    if job_file is not None:
        options.update(read_job_file(job_file))
    options.update({key: value for key, value in flags.items() if value is not None})
    if options.get("input") is None:
        raise UsageError("no INPUT file given (as an argument, or as input = ... in --config)")
    options["input"] = Path(options["input"])
    if options.get("output") is not None:
        options["output"] = Path(options["output"])
    return JobConfig(**options)
