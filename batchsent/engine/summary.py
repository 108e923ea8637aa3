"""One summary of a run, made the same way by every engine: its totals (rows, blanks, truncations, reuse and
per-model label counts) and its RunRecord in, a RunSummary out, labels in each model's id2label order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchsent.engine.record import RunRecord
    from batchsent.settings.options import JobConfig


@dataclass(frozen=True)
class ModelSummary:
    """What one model of a multi-model run predicted: its label counts (in the model's label order), the
    rows it truncated (or scored in windows), and the rows it took from the cache or from a repeated text."""

    name: str
    label_counts: dict[str, int]
    truncated: int
    cached: int = 0
    duplicates: int = 0
    chunked: bool = False
    where: str = ""

    def part(self) -> str:
        labels = ", ".join(f"{label} {count:,}" for label, count in self.label_counts.items())
        notes = [f"{self.truncated:,} " + ("over the limit" if self.chunked else "truncated")] if self.truncated else []
        notes += [f"{self.cached:,} from the cache"] if self.cached else []
        notes += [f"{self.duplicates:,} repeated texts"] if self.duplicates else []
        return f"{self.name}: {labels or 'no labels'}" + (f" ({', '.join(notes)})" if notes else "")


@dataclass(frozen=True)
class RunSummary:
    """What a finished job did; ``line()`` is the one-line summary users see.

    ``elapsed`` is the whole run; ``load_seconds`` the model's loading, and rows/s counts
    the scoring time only (rows committed by an earlier, interrupted run excluded).
    A multi-model run lists each model in ``models``; its own ``label_counts`` is then empty,
    ``truncated`` counts rows truncated by any model, and ``cached``/``duplicates`` add up the models'.
    """

    input: Path | str  # a path, or an object URL
    output: Path | str
    rows: int
    scored: int
    empty: int
    truncated: int
    elapsed: float
    label_counts: dict[str, int] = field(default_factory=dict)
    chunked: bool = False
    resumed_rows: int = 0
    where: str = ""  # the device and variant that scored, e.g. "cpu, int8/int_mm"
    load_seconds: float = 0.0
    cached: int = 0  # of the scored rows, those whose probabilities came from the --cache
    duplicates: int = 0  # of the scored rows, those that repeated a text scored earlier in the run
    models: tuple[ModelSummary, ...] = ()  # a multi-model run's models, in column order
    weights_loaded: bool = True  # False: every row came from the cache, load_seconds was the tokenizer's set-up

    @property
    def scoring_seconds(self) -> float:
        return max(self.elapsed - self.load_seconds, 0.0)

    @property
    def rows_per_second(self) -> float:
        """Rows this run scored per second of scoring."""
        seconds = self.scoring_seconds
        return (self.rows - self.resumed_rows) / seconds if seconds > 0 else 0.0

    def line(self) -> str:
        if self.models:
            return self._models_line()
        labels = ", ".join(f"{label} {count:,}" for label, count in self.label_counts.items())
        reused = [f"{self.cached:,} from the cache"] if self.cached else []
        reused += [f"{self.duplicates:,} repeated texts"] if self.duplicates else []
        return (
            f"{self.rows:,} rows: {self.scored:,} scored"
            + (f" ({', '.join(reused)})" if reused else "")
            + f", {self.empty:,} empty, {self.truncated:,} "
            + ("over the limit (scored in windows) " if self.chunked else "truncated ")
            + f"in {self.elapsed:.1f} s ({self._loading()}, {self._scoring()}"
            + (f", resumed after {self.resumed_rows:,} rows)" if self.resumed_rows else ")")
            + (f"; {labels}" if labels else "")
            + f" -> {self.output}"
            + (f" [{self.where}]" if self.where else "")
        )

    def _scoring(self) -> str:
        """Scoring time, and its rate where there is one to tell (not for a run that scored nothing new or
        took no measurable time: "0 rows/s" would read as a stall)."""
        rate = self.rows_per_second
        shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}"
        return f"scoring {self.scoring_seconds:.1f} s" + (f" at {shown} rows/s" if rate > 0 else "")

    def _loading(self) -> str:
        if self.weights_loaded:
            return f"model load {self.load_seconds:.1f} s"
        return f"set-up {self.load_seconds:.1f} s, model not loaded"

    def _models_line(self) -> str:
        wheres = {model.where for model in self.models}
        return (
            f"{self.rows:,} rows: {self.scored:,} scored, {self.empty:,} empty by {len(self.models)} models in "
            f"{self.elapsed:.1f} s (models load {self.load_seconds:.1f} s, {self._scoring()}"
            + (f", resumed after {self.resumed_rows:,} rows)" if self.resumed_rows else ")")
            + "".join(f"; {model.part()}" for model in self.models)
            + f" -> {self.output}"
            + (f" [{wheres.pop()}]" if len(wheres) == 1 else "")
        )


@dataclass
class ModelTotals:
    """One model's counts over the rows a run scored."""

    label_counts: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    cached: int = 0
    duplicates: int = 0

    def add_labels(self, counts: dict[str, int]) -> None:
        """Add label counts (a file's, a merged block's) to this model's."""
        for label, count in counts.items():
            self.label_counts[label] = self.label_counts.get(label, 0) + count


@dataclass
class RunTotals:
    """A run's counts; ``models`` holds one entry per model in the run's model order (one for a single model)."""

    rows: int = 0
    empty: int = 0
    truncated: int = 0  # rows truncated by any model
    cached: int = 0  # added up over the models
    duplicates: int = 0
    models: list[ModelTotals] = field(default_factory=list)


def in_label_order(counts: dict[str, int], labels: list[str] | None) -> dict[str, int]:
    """Label counts in the model's id2label order, any label it does not name after them (sorted)."""
    order = list(labels or []) + sorted(set(counts) - set(labels or []))
    return {label: counts[label] for label in order if label in counts}


def build_summary(
    config: JobConfig,
    output: Path | str,
    totals: RunTotals,
    elapsed: float,
    record: RunRecord,
    where: list[str],
    weights_loaded: bool = True,
) -> RunSummary:
    """The run's summary. ``where`` says per model what scored it ("cpu, float32"; "ray, 2 workers, ..."); the
    labels' order comes from the record's model entries, which every engine fills."""
    wanted = config.scoring_models()
    entries = list(record.get("models") or [])
    labels = [entries[index].get("labels") if index < len(entries) else None for index in range(len(wanted))]
    per_model = totals.models or [ModelTotals() for _ in wanted]
    ordered = [in_label_order(found.label_counts, names) for found, names in zip(per_model, labels)]
    several = wanted[0].name is not None
    models = tuple(
        ModelSummary(
            model.name,
            ordered[index],
            per_model[index].truncated,
            per_model[index].cached,
            per_model[index].duplicates,
            model.options.long_text == "chunk",
            where[index],
        )
        for index, model in enumerate(wanted)
        if model.name is not None
    )
    return RunSummary(
        config.input,
        output,
        totals.rows,
        totals.rows - totals.empty,
        totals.empty,
        totals.truncated,
        elapsed,
        {} if several else ordered[0],
        any(model.options.long_text == "chunk" for model in wanted),
        record.get("resumed_from_rows", 0),
        "" if several else where[0],
        record.get("load_seconds", 0.0),
        totals.cached,
        totals.duplicates,
        models,
        weights_loaded,
    )
