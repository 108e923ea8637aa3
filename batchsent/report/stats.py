"""Streaming statistics of a scored file, for `batchsent report`.

One pass over the file in record batches: counts, per-label score histograms and
group-by-label counts are added up; example rows are kept in bounded heaps. Memory does
not grow with rows (distinct ``--by`` groups are capped at MAX_GROUPS; later new groups
count as "other").
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchsent.data import readers
from batchsent.data.storage import is_url
from batchsent.errors import ColumnNotFound, InputError
from batchsent.settings.options import REPORT_EXAMPLES, REPORT_LOW_CONFIDENCE

HISTOGRAM_BINS = 20
MAX_GROUPS = 100_000
OTHER = "other"
REPORT_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class ReportOptions:
    prefix: str = "sentiment_"
    by: str | None = None
    gold: str | None = None
    text: str | None = None
    examples: int = REPORT_EXAMPLES
    low_confidence: float = REPORT_LOW_CONFIDENCE
    prefixes: tuple[str, ...] = ()  # a multi-model file: each model's prefix (``prefix`` is then unused)

    @property
    def model_prefixes(self) -> tuple[str, ...]:
        return tuple(self.prefixes) or (self.prefix,)

    def __post_init__(self) -> None:
        if self.examples < 0:
            raise InputError(f"--examples must be zero or positive, got {self.examples}")
        if not 0.0 <= self.low_confidence <= 1.0:
            raise InputError(f"--low-confidence must be between 0 and 1, got {self.low_confidence}")


@dataclass
class ReportStats:
    """Everything the report shows, added up batch by batch."""

    source: Path | str  # a path, or an object URL
    options: ReportOptions
    text_column: str | None
    rows: int = 0
    scored: int = 0
    truncated: int | None = None
    label_counts: Counter[str] = field(default_factory=Counter)
    histograms: dict[str, np.ndarray] = field(default_factory=dict)
    low_confidence: int = 0
    least_confident: list[tuple[float, int, str, str]] = field(default_factory=list)  # max-heap via -score
    most_confident: dict[str, list[tuple[float, int, str]]] = field(default_factory=dict)  # min-heaps
    groups: dict[str, Counter[str]] = field(default_factory=dict)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def empty(self) -> int:
        return self.rows - self.scored

    def labels(self) -> list[str]:
        return sorted(self.label_counts, key=lambda label: (-self.label_counts[label], label))

    def add(
        self,
        labels: pa.Array,
        scores: np.ndarray,
        texts: list | None,
        groups: pa.Array | None,
        gold: pa.Array | None,
        first_row: int,
    ) -> None:
        """Add one batch: prediction labels (nulls for blank rows), scores, and optional columns."""
        self.rows += len(labels)
        scored = pc.is_valid(labels).to_numpy(zero_copy_only=False)
        self.scored += int(scored.sum())
        label_values = np.asarray(labels.to_pylist(), dtype=object)
        for entry in pc.value_counts(labels.drop_null()).to_pylist():
            self.label_counts[entry["values"]] += entry["counts"]
        for label in np.unique(label_values[scored]).tolist():
            mine = scores[scored & (label_values == label)]
            counts, _ = np.histogram(mine, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
            self.histograms[label] = self.histograms.get(label, np.zeros(HISTOGRAM_BINS, np.int64)) + counts
        self._add_examples(label_values, scores, scored, texts, first_row)
        if groups is not None:
            self._add_pairs(self._grouped, groups, labels)
        if gold is not None:
            self._add_pairs(self._gold, gold, labels)

    def _add_examples(self, labels, scores, scored, texts, first_row) -> None:
        n = self.options.examples
        low = scored & (scores < self.options.low_confidence)
        self.low_confidence += int(low.sum())
        if not n:
            return
        candidates = np.flatnonzero(low)
        for i in candidates[np.argsort(scores[candidates], kind="stable")[:n]]:
            item = (-float(scores[i]), first_row + int(i), str(labels[i]), _text(texts, i))
            _push_bounded(self.least_confident, item, n)
        for label in np.unique(labels[scored]).tolist():
            rows = np.flatnonzero(scored & (labels == label))
            best = rows[np.argsort(-scores[rows], kind="stable")[:n]]
            heap = self.most_confident.setdefault(label, [])
            for i in best:
                _push_bounded(heap, (float(scores[i]), -(first_row + int(i)), _text(texts, i)), n)

    def _grouped(self, key: str, label: str, count: int) -> None:
        if key not in self.groups and len(self.groups) >= MAX_GROUPS:
            key = OTHER
        self.groups.setdefault(key, Counter())[label] += count

    def _gold(self, key: str, label: str, count: int) -> None:
        self.confusion[(key, label)] += count

    @staticmethod
    def _add_pairs(add, keys: pa.Array, labels: pa.Array) -> None:
        table = pa.table({"key": pc.cast(keys, pa.string()), "label": labels}).filter(pc.is_valid(labels))
        table = table.filter(pc.is_valid(table.column("key")))
        for row in table.group_by(["key", "label"]).aggregate([([], "count_all")]).to_pylist():
            add(row["key"], row["label"], row["count_all"])


def _push_bounded(heap: list, item: tuple, size: int) -> None:
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


def _text(texts: list | None, i: int) -> str:
    return "" if texts is None or texts[i] is None else str(texts[i])


def prediction_columns(prefix: str) -> tuple[str, str]:
    return f"{prefix}label", f"{prefix}score"


def _check_columns(reader: readers.Reader, options: ReportOptions) -> str | None:
    names = reader.schema.names
    label_name, score_name = prediction_columns(options.prefix)
    missing = [name for name in (label_name, score_name) if name not in names]
    if missing:
        raise InputError(
            f"{reader.path}: no prediction columns {', '.join(map(repr, missing))} "
            f"(expected {label_name!r} and {score_name!r}; was it scored with another --prefix?)"
        )
    shown = ", ".join(map(repr, names))
    for flag, name in (("--by", options.by), ("--gold", options.gold), ("--text", options.text)):
        if name is not None and name not in names:
            raise ColumnNotFound(f"{reader.path}: {flag} {name!r} is not a column; the file has {shown}")
    if options.text is not None:
        return options.text
    return "text" if "text" in names else None


def _scores(column: pa.Array) -> np.ndarray:
    """Scores as float64, nulls (and CSV's empty cells) as NaN."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.if_else(pc.equal(column, ""), pa.scalar(None, column.type), column)
        try:
            column = pc.cast(column, pa.float64())
        except pa.ArrowInvalid as error:
            raise InputError(f"the score column holds values that are not numbers ({error})") from error
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def _labels(column: pa.Array) -> pa.Array:
    column = pc.cast(column, pa.string())
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def scored_files(path: Path | str) -> list[Path | str]:
    """The file itself, or every output file of a scored folder or object prefix in order: the files a folder
    INPUT selects (sources.expand), so nested and compressed outputs of a folder run are all counted."""
    from batchsent.data.sources import expand, is_prefix

    if is_url(path):
        return list(expand(f"{str(path).rstrip('/')}/" if is_prefix(str(path)) else path).files)
    if not Path(path).is_dir():
        return [path]
    return [Path(file) for file in expand(path).files]


@dataclass
class Agreement:
    """How often two models with the same label set give a row the same label (rows both scored)."""

    first: str  # the models' prefixes
    second: str
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (first's label, second's label) -> rows

    @property
    def rows(self) -> int:
        return sum(self.pairs.values())

    @property
    def agreed(self) -> int:
        return sum(count for (a, b), count in self.pairs.items() if a == b)

    def add(self, first: pa.Array, second: pa.Array) -> None:
        table = pa.table({"a": first, "b": second}).filter(pc.and_(pc.is_valid(first), pc.is_valid(second)))
        for row in table.group_by(["a", "b"]).aggregate([([], "count_all")]).to_pylist():
            self.pairs[(row["a"], row["b"])] += row["count_all"]


@dataclass
class ModelsReport:
    """Each model's statistics (one for a single-model file) and the agreement of models that share labels."""

    models: list[ReportStats]
    agreements: list[Agreement]


def collect(path: Path | str, options: ReportOptions, truncated: int | None = None) -> ReportStats:
    """Read a scored file (or every output file of a folder run) once and return its statistics (one model's)."""
    return collect_models(path, options, truncated).models[0]


def collect_models(path: Path | str, options: ReportOptions, truncated: int | None = None) -> ModelsReport:
    """Read a scored file (or every output file of a folder run) once: each model's statistics, and how often each two
    models agree when their label sets are the same. Columns are checked before any row is read."""
    models: list[ReportStats] = []
    candidates: list[Agreement] = []
    first_row = 1  # rows are numbered from 1, as a spreadsheet shows them
    for part in scored_files(path):
        reader = readers.open_reader(part, table=True)
        try:
            for prefix in options.model_prefixes:
                text_column = _check_columns(reader, replace(options, prefix=prefix))
            if not models:
                models = [
                    ReportStats(path, replace(options, prefix=prefix), text_column, truncated=truncated)
                    for prefix in options.model_prefixes
                ]
                prefixes = options.model_prefixes
                candidates = [Agreement(a, b) for i, a in enumerate(prefixes) for b in prefixes[i + 1 :]]
            first_row = _add_file(models, candidates, reader, first_row)
        finally:
            reader.close()
    if options.gold is not None:
        for stats in models:
            check_gold_overlap(stats)
    label_sets = {stats.options.prefix: set(stats.label_counts) for stats in models}
    agreements = [pair for pair in candidates if label_sets[pair.first] == label_sets[pair.second]]
    return ModelsReport(models, agreements)


def _add_file(models: list[ReportStats], agreements: list[Agreement], reader: readers.Reader, first_row: int) -> int:
    """Add every row of one scored file; returns the number of the next row."""
    options = models[0].options
    for batch in reader.batches(REPORT_CHUNK_ROWS):
        table = pa.Table.from_batches([batch])
        text = models[0].text_column
        texts = readers.text_values(pc.cast(table.column(text).combine_chunks(), pa.string())) if text else None
        labels = {}
        for stats in models:
            label_name, score_name = prediction_columns(stats.options.prefix)
            labels[stats.options.prefix] = _labels(table.column(label_name).combine_chunks())
            stats.add(
                labels[stats.options.prefix],
                _scores(table.column(score_name).combine_chunks()),
                texts,
                table.column(options.by).combine_chunks() if options.by else None,
                table.column(options.gold).combine_chunks() if options.gold else None,
                first_row,
            )
        for agreement in agreements:
            agreement.add(labels[agreement.first], labels[agreement.second])
        first_row += batch.num_rows
    return first_row


def check_gold_overlap(stats: ReportStats) -> None:
    gold_values = {gold for gold, _ in stats.confusion}
    predicted = set(stats.label_counts)
    if gold_values and not gold_values & predicted:
        raise InputError(
            f"{stats.source}: gold labels in {stats.options.gold!r} share no value with the model's labels "
            f"(gold: {', '.join(sorted(gold_values)[:10])}; model: {', '.join(sorted(predicted))})"
        )


@dataclass(frozen=True)
class LabelMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


def metrics(stats: ReportStats) -> tuple[float, list[LabelMetrics], list[str], list[str]]:
    """Accuracy, per-label precision/recall/F1, and the confusion matrix's gold and predicted axes."""
    gold_axis = sorted({g for g, _ in stats.confusion})
    predicted_axis = stats.labels()
    total = sum(stats.confusion.values())
    correct = sum(count for (g, p), count in stats.confusion.items() if g == p)
    rows = []
    for label in sorted(set(gold_axis) | set(predicted_axis)):
        true_positive = stats.confusion[(label, label)]
        predicted = sum(c for (_, p), c in stats.confusion.items() if p == label)
        actual = sum(c for (g, _), c in stats.confusion.items() if g == label)
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(LabelMetrics(label, precision, recall, f1, actual))
    return (correct / total if total else 0.0), rows, gold_axis, predicted_axis


def top_groups(stats: ReportStats, limit: int = 10) -> list[tuple[str, Counter[str]]]:
    """The largest groups, the rest folded into "other"."""
    ordered = sorted(stats.groups.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    shown, rest = ordered[:limit], ordered[limit:]
    if rest:
        other: Counter[str] = Counter()
        for _, counts in rest:
            other.update(counts)
        shown.append((OTHER, other))
    return shown
