"""The one options object of a job, validated once, before anything loads.

``ModelOptions`` is what the Classifier needs; ``JobConfig`` adds what a job needs around
it (files, columns, engine, manifest, report). Each option's rule lives here, in the
``__post_init__`` of the class that owns it, or in the module it names (devices,
backends, precision), called from here and nowhere else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from batchsent.data.formats import split_suffix
from batchsent.data.storage import check_location, is_url
from batchsent.errors import UsageError
from batchsent.runtime.backends import check_backend_options
from batchsent.runtime.device import check_device_name, check_dtype_name
from batchsent.runtime.precision import check_precision_options

DEFAULT_MODEL = "distilbert-base-uncased-finetuned-sst-2-english"
DEFAULT_CHUNK_ROWS = 4096
MAX_CHUNK_ROWS = 1_000_000
DEFAULT_STRIDE = 64
DEFAULT_HYPOTHESIS = "This example is {}."  # the zero-shot-classification pipeline's
LONG_TEXT_MODES = ("truncate", "chunk")
AGGREGATIONS = ("mean", "max", "first")  # how a long text's windows make one row (model.postprocess)
DEFAULT_AGGREGATION = "mean"
REPORT_EXAMPLES = 5  # example rows per table of a report
REPORT_LOW_CONFIDENCE = 0.6  # a score below it counts as low confidence in a report
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
ENGINES = ("local", "ray")


def scored_name(name: str) -> str:
    """The default output name of an input file: ``x.csv.gz`` -> ``x.scored.csv.gz``."""
    stem, suffix, compressed = split_suffix(name)
    return f"{stem}.scored{suffix}{compressed}"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and taskset narrow), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")


def check_report_target(target: Path) -> None:
    """Refuse a report path that is not an .html file in an existing folder (before any work)."""
    if target.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"{target}: a report is an .html file")
    if not target.parent.is_dir():
        raise UsageError(f"{target}: the folder {target.parent} does not exist")
    if target.is_dir():
        raise UsageError(f"{target}: is a folder; a report is an .html file")


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """How a Classifier loads and runs its model. None means "the device's or model's default"."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_length: int | None = None
    batch_size: int | None = None
    token_budget: int | None = None
    threads: int | None = None
    long_text: str = "truncate"
    stride: int | None = None
    aggregate: str | None = None
    backend: str = "torch"
    quantize: str | None = None
    precision: str | None = None
    int8_kernel: str | None = (
        None  # with --quantize int8 on torch: "int_mm" or "fbgemm" instead of this CPU's pick (tune)
    )
    labels: str | None = None  # zero-shot: candidate labels, comma-separated, scored with an NLI model
    hypothesis_template: str = DEFAULT_HYPOTHESIS
    multi_label: bool = False
    trust_remote_code: bool = False  # run code a model folder brings (its config's auto_map); off unless asked

    def __post_init__(self) -> None:
        _positive(
            batch_size=self.batch_size, token_budget=self.token_budget, max_length=self.max_length, threads=self.threads
        )
        if self.threads is not None and self.threads > usable_cpus():
            raise UsageError(
                f"--threads {self.threads}: this machine lets batchsent use {usable_cpus()} CPUs; give at "
                f"most {usable_cpus()}"
            )
        check_device_name(self.device)
        check_dtype_name(self.dtype)
        if self.long_text not in LONG_TEXT_MODES:
            raise UsageError(f"--long-text {self.long_text!r}: expected truncate or chunk")
        if self.long_text != "chunk" and (self.stride is not None or self.aggregate is not None):
            raise UsageError("--stride and --aggregate need --long-text chunk")
        if self.aggregate is not None and self.aggregate not in AGGREGATIONS:
            raise UsageError(f"--aggregate {self.aggregate!r}: expected mean, max or first")
        if self.stride is not None and self.stride < 0:
            raise UsageError(f"--stride must be zero or positive, got {self.stride}")
        if self.stride is not None and self.max_length is not None and self.stride >= self.max_length:
            raise UsageError(f"--stride {self.stride} must be smaller than the window (--max-length {self.max_length})")
        check_precision_options(self.precision, self.dtype, self.quantize, self.backend)
        check_backend_options(self.backend, self.quantize, self.dtype, self.int8_kernel)
        self._check_zero_shot()

    def _check_zero_shot(self) -> None:
        """The pipeline's rules for candidate labels and the template, refused in one line before loading."""
        if self.labels is None:
            if self.multi_label or self.hypothesis_template != DEFAULT_HYPOTHESIS:
                raise UsageError("--multi-label and --hypothesis-template need --labels (zero-shot classification)")
            return
        labels = self.candidate_labels
        if not labels:
            raise UsageError('--labels: give at least one label, e.g. --labels "billing,shipping,refund"')
        if len(set(labels)) != len(labels):
            raise UsageError(f"--labels {self.labels!r}: a label appears twice")
        shown = f"--hypothesis-template {self.hypothesis_template!r}"
        try:
            filled = self.hypothesis_template.format(labels[0])
        except KeyError as error:
            raise UsageError(
                f"{shown}: {{{error.args[0]}}} is not filled in; {{}} marks where the label goes"
            ) from None
        except IndexError:
            raise UsageError(
                f"{shown}: only one {{}} (where the label goes) may appear; write {{{{ and }}}} for literal braces"
            ) from None
        except ValueError as error:
            raise UsageError(f"{shown}: {error}; write {{{{ and }}}} for literal braces") from None
        if filled == self.hypothesis_template:
            raise UsageError(f"--hypothesis-template {self.hypothesis_template!r} has no {{}} where the label goes")
        if self.long_text == "chunk":
            raise UsageError("--labels cannot be combined with --long-text chunk")

    @property
    def candidate_labels(self) -> tuple[str, ...]:
        """The zero-shot labels, as the pipeline splits them (empty when not zero-shot)."""
        return tuple(label.strip() for label in (self.labels or "").split(",") if label.strip())

    @property
    def window_stride(self) -> int:
        """Tokens shared by consecutive windows in chunk mode (the default filled in)."""
        return DEFAULT_STRIDE if self.stride is None else self.stride

    @property
    def window_aggregate(self) -> str:
        return self.aggregate or DEFAULT_AGGREGATION

    def model_options(self) -> ModelOptions:
        """Just the model part (a JobConfig passes itself through this to a Classifier)."""
        return ModelOptions(**{f.name: getattr(self, f.name) for f in fields(ModelOptions)})


PER_MODEL_KEYS = tuple(f.name for f in fields(ModelOptions) if f.name != "threads")  # threads are per process


@dataclass(frozen=True)
class ModelSpec:
    """One model of a multi-model run: ``name`` (its columns are ``<name>_label``...), the model, and
    its own options (``(key, value)`` pairs of ModelOptions fields) over the job's."""

    name: str
    model: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, value: str) -> ModelSpec | None:
        """``NAME=MODEL`` as a ModelSpec; None for a plain model id or path (no ``NAME=`` in front)."""
        name, equals, model = value.partition("=")
        if not equals:
            return None
        if not MODEL_NAME.match(name):
            if "/" in name or Path(value).expanduser().exists():
                return None  # a path or Hub id that holds "=", not NAME=MODEL
            raise UsageError(
                f"--model {value}: {name!r} cannot be a NAME (a NAME is letters, digits, _ and -, "
                "starting with a letter or digit)"
            )
        if not model:
            raise UsageError(f"--model {value}: give the model after {name}=")
        return cls(name, model)

    @classmethod
    def of(cls, value: ModelSpec | str | dict[str, Any]) -> ModelSpec:
        """A ModelSpec from itself, ``"NAME=MODEL"`` or ``{"name": ..., "model": ..., <options>}`` (Python callers)."""
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str):
            spec = cls.parse(value)
            if spec is None:
                raise UsageError(f"models: {value!r} is not NAME=MODEL")
            return spec
        table = dict(value)
        name, model = table.pop("name", None), table.pop("model", None)
        if not isinstance(name, str) or not isinstance(model, str):
            raise UsageError(f"models: each model needs a name and a model, got {value!r}")
        return cls(name, model, tuple(sorted(table.items())))

    def described(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, **dict(self.options)}


@dataclass(frozen=True)
class ScoringModel:
    """A model as one run scores it: its name (None in a single-model run), column prefix and options."""

    name: str | None
    prefix: str
    options: ModelOptions


@dataclass(frozen=True, kw_only=True)
class JobConfig(ModelOptions):
    """One scoring job. ``output`` None means ``<input stem>.scored<suffix>`` beside the input
    (``<folder>.scored`` for a folder or glob); ``manifest`` and ``report`` are written at the end;
    ``cache`` is a prediction cache shared across runs: a SQLite file for the local engine (``batchsent.cache.store``),
    a folder or object prefix for Ray (``batchsent.cache.shared``)."""

    input: Path | str  # a path, or an object URL (s3://, gs://, az://) kept as a string
    output: Path | str | None = None  # likewise
    column: str = "text"
    prefix: str = "sentiment_"
    all_scores: bool = False
    overwrite: bool = False
    quiet: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    resume: bool = False
    engine: str = "local"
    ray_address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    manifest: Path | None = None
    report: Path | None = None
    cache: Path | None = None  # or, for --engine ray, an object URL
    pair_column: str | None = None  # a second text column: (text, text_pair) for cross-encoders
    models: tuple[ModelSpec, ...] = ()  # several models in one pass (``model`` and ``prefix`` then unused)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "models", tuple(ModelSpec.of(spec) for spec in self.models))
        self.scoring_models()  # each model's own options validated now
        for name in ("input", "output", "manifest", "report", "cache"):  # Python callers may pass strings
            value = getattr(self, name)
            check_location(f"--{name}" if name != "input" else "INPUT", value)
            if isinstance(value, str) and not (name in ("input", "output", "cache") and is_url(value)):
                object.__setattr__(self, name, Path(value))
        for name in ("manifest", "report", "cache"):
            if is_url(str(getattr(self, name) or "")) and not (name == "cache" and self.engine == "ray"):
                raise UsageError(
                    f"--{name} must be a local path"
                    + (" (a Ray run's may be an object prefix)" if name == "cache" else "")
                )
        _positive(chunk_rows=self.chunk_rows)
        if self.chunk_rows > MAX_CHUNK_ROWS:  # a chunk's rows, tokens and outputs are held in memory at once
            raise UsageError(f"--chunk-rows {self.chunk_rows}: at most {MAX_CHUNK_ROWS:,} rows are read at a time")
        if self.engine not in ENGINES:
            raise UsageError(f"--engine {self.engine!r}: expected local or ray")
        if self.engine == "local" and (self.ray_address is not None or self.workers != 1 or self.gpus_per_worker):
            raise UsageError("--ray-address, --workers and --gpus-per-worker need --engine ray")
        if self.workers < 1 or self.gpus_per_worker < 0:
            raise UsageError("--workers must be positive and --gpus-per-worker zero or more")
        if self.pair_column is not None:
            if self.pair_column == self.column:
                raise UsageError(f"--pair-column {self.pair_column!r} is the text column itself")
            for scoring in self.scoring_models():
                whose = f"model {scoring.name}: " if scoring.name else ""
                if scoring.options.long_text == "chunk":
                    raise UsageError(
                        f"{whose}--pair-column cannot be combined with --long-text chunk (windows of a "
                        "pair have no sound definition)"
                    )
                if scoring.options.labels is not None:
                    raise UsageError(
                        f"{whose}--pair-column cannot be combined with --labels (zero-shot pairs each "
                        "text with its hypotheses)"
                    )
        if self.manifest is not None and Path(self.manifest).expanduser().is_dir():
            raise UsageError(
                f"--manifest {self.manifest}: is a folder; give a file name, e.g. {Path(self.manifest) / 'run.json'}"
            )
        if self.report is not None:
            check_report_target(self.report)
        if is_url(self.output_path) and self.engine == "ray" and self.report is not None:
            raise UsageError("--report needs a local output; run batchsent report on a downloaded copy")
        if is_url(self.output_path) and self.engine == "local":
            if self.resume:
                raise UsageError(
                    "--resume needs a local output: an object-storage output is staged on this machine "
                    "and uploaded when complete, so a failed run starts over"
                )
            if self.report is not None:
                raise UsageError("--report needs a local output; run batchsent report on a downloaded copy")

    def scoring_models(self) -> list[ScoringModel]:
        """The models this job scores with, in column order: the one ``model`` with ``prefix``, or each of
        ``models`` with ``<name>_`` and the job's model options overridden by its own."""
        if not self.models:
            return [ScoringModel(None, self.prefix, self.model_options())]
        if self.prefix != "sentiment_":
            raise UsageError(
                "--prefix is for a single model; with several, each NAME in --model NAME=MODEL is "
                "its columns' prefix (NAME_label, NAME_score)"
            )
        if self.revision is not None:
            raise UsageError(
                "--revision is for a single model; with several, give each its revision in a "
                "[[models]] table of --config"
            )
        base, scoring, seen = self.model_options(), [], set()
        for spec in self.models:
            if not MODEL_NAME.match(spec.name):
                raise UsageError(f"--model {spec.name}={spec.model}: a NAME is letters, digits, _ and -")
            if spec.name in seen:
                raise UsageError(f"--model {spec.name}=...: the name {spec.name!r} is given twice")
            seen.add(spec.name)
            unknown = sorted(set(dict(spec.options)) - set(PER_MODEL_KEYS))
            if unknown:
                raise UsageError(f"model {spec.name}: {', '.join(unknown)} cannot be set per model")
            try:
                options = replace(base, model=spec.model, **dict(spec.options))
            except UsageError as error:
                raise UsageError(f"model {spec.name}: {error}") from None
            scoring.append(ScoringModel(spec.name, f"{spec.name}_", options))
        return scoring

    @property
    def output_path(self) -> Path | str:
        """Where a run writes one input file's output (either engine), a path or an object URL; an
        existing folder as --output takes the default name inside it (``-o exports/``, as ``cp`` does)."""
        if self.output is not None:
            if (
                isinstance(self.output, Path)
                and not is_url(self.input)
                and self.output.is_dir()
                and Path(self.input).is_file()
            ):
                return self.output / scored_name(Path(self.input).name)
            return self.output
        if is_url(self.input):
            folder, _, name = str(self.input).rpartition("/")
            return f"{folder}/{scored_name(name)}"
        source = Path(self.input)
        source = source if source.name not in ("", "..") else Path(os.path.abspath(source))  # "." and ".."
        return source.with_name(scored_name(source.name))

    def described(self) -> dict[str, Any]:
        """Every option as JSON-ready values (paths as strings), for the manifest."""
        described = {f.name: (str(v) if isinstance(v := getattr(self, f.name), Path) else v) for f in fields(self)}
        described["models"] = [spec.described() for spec in self.models]
        return described
