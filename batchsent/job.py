"""The local engine: reader -> chunks -> Classifier -> prediction columns -> committed parts -> output.

Reading and tokenizing the next chunk runs in one background thread while the model
scores the current one (a queue of bounded depth keeps memory flat and order intact).
Every check that needs no model runs before the model loads. ``runner.run`` wraps this
with signals, the manifest and the report.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from . import __version__, io
from .cache import PredictionCache
from .checkpoint import Checkpoint, CommittedState, ResumeMismatch, first_difference
from .errors import BatchsentError, InputError, OutputError, ScoringError, first_line
from .identity import input_fingerprint, model_identity
from .lock import OutputLock
from .options import JobConfig
from .postprocess import column_names, output_fields, prediction_arrays
from .reuse import ChunkPlan, ReuseCounts, RunReuse, model_description
from .storage import is_url

if TYPE_CHECKING:
    from .model import Classifier, EncodedChunk

T = TypeVar("T")
PREFETCH_DEPTH = 1


class Progress(Protocol):
    """What a job reports while it runs (the CLI draws it; the core only counts).

    ``loaded`` comes once the model is ready, ``advance`` after every model batch; ``note``
    carries one-off events (a signal was received).
    """

    def loaded(self, seconds: float, where: str) -> None: ...

    def start(self, total_rows: int | None, total_bytes: int) -> None: ...

    def advance(self, rows_done: int, bytes_done: int) -> None: ...

    def note(self, message: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RunSummary:
    """What a finished job did; ``line()`` is the one-line summary users see.

    ``elapsed`` is the whole run; ``load_seconds`` the model's loading, and rows/s counts
    the scoring time only (rows committed by an earlier, interrupted run excluded).
    """

    input: Path
    output: Path
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

    @property
    def scoring_seconds(self) -> float:
        return max(self.elapsed - self.load_seconds, 0.0)

    @property
    def rows_per_second(self) -> float:
        """Rows this run scored per second of scoring."""
        seconds = self.scoring_seconds
        return (self.rows - self.resumed_rows) / seconds if seconds > 0 else 0.0

    def line(self) -> str:
        labels = ", ".join(f"{label} {count:,}" for label, count in self.label_counts.items())
        reused = [f"{self.cached:,} from the cache"] if self.cached else []
        reused += [f"{self.duplicates:,} repeated texts"] if self.duplicates else []
        return (
            f"{self.rows:,} rows: {self.scored:,} scored" + (f" ({', '.join(reused)})" if reused else "")
            + f", {self.empty:,} empty, {self.truncated:,} "
            + ("over the limit (scored in windows) " if self.chunked else "truncated ")
            + f"in {self.elapsed:.1f} s (model load {self.load_seconds:.1f} s, scoring {self.scoring_seconds:.1f} s "
            + f"at {self.rows_per_second:,.0f} rows/s"
            + (f", resumed after {self.resumed_rows:,} rows)" if self.resumed_rows else ")")
            + (f"; {labels}" if labels else "")
            + f" -> {self.output}"
            + (f" [{self.where}]" if self.where else "")
        )


def check_output(config: JobConfig) -> Path:
    """The output path, refused when it is the input, exists (without overwrite) or cannot be made."""
    output = config.output_path
    if (io.file_format(config.input) == "jsonl") != (io.file_format(output, output=True) == "jsonl"):
        raise OutputError(f"{output}: JSON Lines input is written as JSON Lines (.jsonl or .ndjson), "
                          "and only JSON Lines input can be")  # fmt: skip
    assert isinstance(output, Path), "an object-storage output is staged locally by runner.run"
    local_input = not is_url(config.input)
    if local_input and (output.resolve() == config.input.resolve()
                        or (output.exists() and os.path.samefile(output, config.input))):  # fmt: skip
        raise OutputError(f"{output}: the output would replace the input; choose another --output")
    if output.is_dir():
        raise OutputError(f"{output}: is a directory")
    resuming = config.resume and Checkpoint(output).exists()  # killed between the rename and the clean-up
    if output.exists() and not config.overwrite and not resuming:
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(f"{output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: cannot write in {parent} (permission denied)")
    return output


def check_new_columns(names: list[str], schema: pa.Schema, path: Path) -> None:
    """Refuse an input that already holds a column the job would add."""
    taken = [name for name in names if name in schema.names]
    if taken:
        raise InputError(f"{path}: already has column(s) {', '.join(map(repr, taken))}; choose another --prefix")


def _prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """Yield ``items`` produced by one background thread, at most ``depth`` ahead.

    Errors in the producer are raised in the consumer; a consumer that stops early
    stops the producer too.
    """
    slots: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("done", None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            slots.put(("error", error))

    worker = threading.Thread(target=produce, name="batchsent-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get(timeout=0.1)
            except queue.Empty:
                pass


RESULT_OPTIONS = ("column", "revision", "max_length", "batch_size", "token_budget", "device", "dtype", "threads",
                  "chunk_rows", "prefix", "all_scores", "long_text", "stride", "aggregate", "backend", "quantize",
                  "precision", "pair_column", "labels", "hypothesis_template", "multi_label")  # fmt: skip


def _fingerprint(config: JobConfig, output: Path) -> dict[str, Any]:
    """What the committed rows depend on, before the model loads (the model is added after)."""
    options = {name: getattr(config, name) for name in RESULT_OPTIONS}
    options["output_format"] = io.file_format(output, output=True)
    return {"input": input_fingerprint(config.input), "options": options}


def _model_fingerprint(identity: dict[str, Any], classifier: Classifier) -> dict[str, Any]:
    effective = {name: getattr(classifier, name) for name in ("batch_size", "token_budget", "max_length", "dtype", "variant")}
    return {**identity, "device_type": classifier.device.type, **effective}


def score_local(
    config: JobConfig,
    progress: Progress | None = None,
    classifier: Classifier | None = None,
    stop: Callable[[], bool] | None = None,
    record: dict[str, Any] | None = None,
) -> RunSummary:
    """Score ``config.input`` into ``config.output_path`` and return what was done.

    Each chunk is committed to a progress folder beside the output; the output itself
    appears, complete, only at the end. ``config.resume`` continues an interrupted run.
    Each distinct text is scored once; ``config.cache`` keeps its probabilities for later
    runs. ``stop()`` is asked before every batch: when it returns True the job raises
    ``Interrupted``, its committed progress kept. ``record`` (a dict) is filled with
    what a run manifest reports, also when the job fails. A ready ``classifier`` may be
    passed to reuse a loaded model across jobs. The output's lock is held throughout.
    """
    started = time.monotonic()
    record = {} if record is None else record
    output = check_output(config)
    with OutputLock(output):
        checkpoint = _checkpoint_for(config, output)
        reader = io.open_reader(config.input)
        stores: list[PredictionCache] = []
        try:
            job = _prepare(config, output, reader, checkpoint, classifier, record, progress, stores)
            job.score(progress, stop)
            job.finish(output, stores)
        finally:
            reader.close()
            for store in stores:
                store.close()
    state, classifier = job.state, job.classifier
    return RunSummary(
        config.input, output, state.rows, state.rows - state.empty, state.empty, state.truncated,
        time.monotonic() - started, {k: state.label_counts[k] for k in classifier.labels if k in state.label_counts},
        classifier.long_text == "chunk", record["resumed_from_rows"], f"{classifier.device}, {classifier.variant}",
        record["load_seconds"], state.cached, state.duplicates,
    )  # fmt: skip


def score_to_object(config: JobConfig, progress: Progress | None = None, classifier: Classifier | None = None,
                    stop: Callable[[], bool] | None = None, record: dict[str, Any] | None = None) -> RunSummary:  # fmt: skip
    """An object-storage output: the job writes a local staging copy, uploaded in one go once complete.

    Nothing appears under the output name before the upload completes; a failed run
    uploads nothing (the staging folder, under $TMPDIR, is removed either way).
    """
    from .storage import check_writable, remote, upload

    record = {} if record is None else record
    io.check_input(config.input)  # the input's own errors first
    target = remote(str(config.output_path), OutputError)
    io.file_format(target.url, output=True)
    check_writable(target, config.overwrite)
    record["output"] = target.url
    with tempfile.TemporaryDirectory(prefix="batchsent-") as staging:
        local = Path(staging) / target.name
        summary = score_local(replace(config, output=local), progress=progress, classifier=classifier, stop=stop,
                              record=record)  # fmt: skip
        upload(local, target)
    return replace(summary, output=target.url)  # type: ignore[arg-type]


def _checkpoint_for(config: JobConfig, output: Path) -> Checkpoint:
    """The output's progress folder: kept for --resume, cleared by --overwrite, else a refusal."""
    checkpoint = Checkpoint(output)
    if checkpoint.exists() and not config.resume:
        if not config.overwrite:
            committed = checkpoint.load().rows
            raise OutputError(
                f"{output}: an interrupted run left {committed:,} committed rows in {checkpoint.directory.name}; "
                "pass --resume to continue it or --overwrite to start over"
            )
        checkpoint.remove()
    return checkpoint


def _prepare(config: JobConfig, output: Path, reader: io.Reader, checkpoint: Checkpoint, classifier: Classifier | None,
             record: dict[str, Any], progress: Progress | None, stores: list[PredictionCache]) -> _Job:  # fmt: skip
    """Every check of the input, the resume state and the cache, the model, and the output schema: a job
    ready to score. Stores opened are appended to ``stores`` (the caller closes them)."""
    column = reader.text_column(config.column)
    pair = None if config.pair_column is None else reader.text_column(config.pair_column)
    check_new_columns(column_names([], config.prefix, False, config.long_text == "chunk"), reader.schema, config.input)
    fingerprint = _fingerprint(config, output)
    state = checkpoint.load() if config.resume and checkpoint.exists() else None
    if state is not None:
        _check_resumable(state.fingerprint, fingerprint, ("input", "options"))
    if config.cache is not None:  # opened, checked and written to before the model loads
        stores.append(PredictionCache(config.cache))
        run_id = stores[0].start_run(__version__)
    classifier = load_classifier(config, classifier, record, progress)
    identity = model_identity(config.model, classifier.model)  # for the resume fingerprint and the cache key
    fingerprint["model"] = _model_fingerprint(identity, classifier)
    record.update(model=fingerprint["model"], labels=classifier.labels, device=str(classifier.device),
                  dtype=classifier.dtype, variant=classifier.variant)  # fmt: skip
    if state is not None:
        _check_resumable(state.fingerprint, fingerprint, ("model",))
    chunked = classifier.long_text == "chunk"
    new_names = column_names(classifier.labels, config.prefix, config.all_scores, chunked)
    check_new_columns(new_names, reader.schema, config.input)
    if isinstance(reader, io.JsonLinesReader):
        reader.reserved = set(new_names)  # checked on every line as it is read
    schema = reader.schema
    for new_field in output_fields(classifier.labels, config.prefix, config.all_scores, chunked):
        schema = schema.append(new_field)
    if state is None:
        state = checkpoint.start(fingerprint)
    record.update(state=state, resumed_from_rows=state.rows)
    if config.cache is None:
        stores.append(PredictionCache(checkpoint.dedupe_store))
        run_id = stores[0].start_run(__version__)
    store = stores[0]
    description = model_description(classifier, identity, pair is not None)
    model_id = store.model_id(config.model, description, classifier.labels)
    reuse = RunReuse(store, model_id, run_id)
    return _Job(config, reader, column, pair, classifier, schema, checkpoint, state, record, reuse)


def load_classifier(config: JobConfig, classifier: Classifier | None, record: dict[str, Any],
                     progress: Progress | None) -> Classifier:  # fmt: skip
    """The job's Classifier (loaded now unless given), its load time recorded and noted."""
    started = time.monotonic()
    if classifier is None:
        from .model import Classifier

        classifier = Classifier(config.model_options())
    record["load_seconds"] = time.monotonic() - started
    if progress is not None:
        progress.loaded(record["load_seconds"], f"{classifier.device}, {classifier.variant}")
    return classifier


def _check_resumable(old: dict[str, Any], new: dict[str, Any], parts: tuple[str, ...]) -> None:
    for part in parts:
        changed = first_difference(old.get(part, {}), new.get(part, {}), f"{part}.")
        if changed:
            raise ResumeMismatch(f"cannot resume: {changed} changed since the interrupted run; pass --overwrite to start over")


@dataclass
class _Job:
    """The scoring loop of one run, over the chunks not yet committed."""

    config: JobConfig
    reader: io.Reader
    column: int
    pair: int | None  # --pair-column's index
    classifier: Classifier
    schema: pa.Schema
    checkpoint: Checkpoint
    state: CommittedState
    record: dict[str, Any]
    reuse: RunReuse

    def _encoded(self) -> Iterator[tuple[pa.RecordBatch, ChunkPlan, EncodedChunk, int | None]]:
        """Each chunk not yet committed, planned against the store, its new texts tokenized."""
        for index, batch in enumerate(self.reader.batches(self.config.chunk_rows)):
            if index < self.state.chunks:
                continue  # committed by an earlier run
            pairs = None if self.pair is None else io.text_values(batch.column(self.pair))
            plan = self._planned(io.text_values(batch.column(self.column)), pairs)
            yield batch, plan, self.classifier.encode(plan.model_texts, plan.model_pairs), self.reader.estimated_rows()

    def _planned(self, texts: list[str | None], pairs: list[str | None] | None) -> ChunkPlan:
        try:
            return self.reuse.plan(texts, pairs)
        except sqlite3.Error as error:
            raise ScoringError(f"cache {self.reuse.store.path}: cannot read: {first_line(error)}") from error

    def _advance(self, progress: Progress, rows_done: int, estimated_rows: int | None) -> None:
        """Rows done, and the byte position they stand for (CSV: rows x the mean bytes per row read so far)."""
        total = self.reader.total_bytes
        position = total if not estimated_rows else min(total, round(total * rows_done / estimated_rows))
        progress.advance(rows_done, position)

    def score(self, progress: Progress | None, stop: Callable[[], bool] | None) -> None:
        state = self.state
        if progress is not None:
            progress.start(self.reader.total_rows, self.reader.total_bytes)
        try:
            for batch, plan, chunk, estimated_rows in _prefetched(self._encoded(), PREFETCH_DEPTH):
                report = None
                if progress is not None:
                    rows_before = state.rows

                    def report(share: float) -> None:
                        self._advance(progress, rows_before + int(share * batch.num_rows), estimated_rows)

                scores, reused = self._completed(plan, self._run_model(chunk, stop, report))
                self._commit(batch, scores, reused)
                if progress is not None:
                    self._advance(progress, state.rows, estimated_rows)
        except InputError as error:
            if state.chunks:  # the file went bad after rows were committed: a failure while running
                raise ScoringError(str(error)) from error
            self.checkpoint.remove()
            raise
        except BaseException:
            if not state.chunks:
                self.checkpoint.remove()
            raise
        finally:
            if progress is not None:
                progress.close()

    def _run_model(self, chunk: EncodedChunk, stop: Callable[[], bool] | None,
                   report: Callable[[float], None] | None) -> Any:  # fmt: skip
        """The Classifier on one chunk; a failure of the model itself becomes a ScoringError."""
        try:
            return self.classifier.run(chunk, stop=stop, on_batch=report)
        except (BatchsentError, KeyboardInterrupt):
            raise
        except Exception as error:  # noqa: BLE001 - any model failure is a failure while running
            raise ScoringError(f"the model failed: {type(error).__name__}: {first_line(error)}") from error

    def _completed(self, plan: ChunkPlan, scores: Any) -> tuple[Any, ReuseCounts]:
        """Every row's scores (the reused ones filled in), the new texts stored before the chunk commits."""
        try:
            return self.reuse.complete(plan, scores)
        except sqlite3.Error as error:
            raise ScoringError(f"cache {self.reuse.store.path}: cannot write: {first_line(error)}") from error

    def _commit(self, batch: pa.RecordBatch, scores: Any, reused: ReuseCounts) -> None:
        """Make one scored chunk durable in the progress folder."""
        classifier, config = self.classifier, self.config
        arrays = prediction_arrays(scores.probabilities, classifier.labels, config.all_scores, scores.windows)
        counts = CommittedState({}, 1, batch.num_rows, int(scores.blank.sum()), int(scores.truncated.sum()),
                                cached=reused.cached, duplicates=reused.duplicates)  # fmt: skip
        for entry in pc.value_counts(arrays[0].drop_null()).to_pylist():
            counts.label_counts[entry["values"]] = entry["counts"]
        try:
            self.checkpoint.commit(self.state, pa.RecordBatch.from_arrays(batch.columns + arrays, schema=self.schema), counts)
        except OSError as error:
            raise ScoringError(f"cannot save progress in {self.checkpoint.directory}: {error}") from error

    def finish(self, output: Path, stores: list[PredictionCache]) -> None:
        """Assemble the output from the committed parts, rename it into place, drop the progress
        (the ``stores`` closed first: the private one lives in the progress folder)."""
        writer = io.AtomicWriter(output, self.schema)
        try:
            for batch in self.checkpoint.parts(self.state):
                writer.write(batch)
            writer.commit()
        except OSError as error:
            writer.abort()
            raise ScoringError(f"{output}: cannot write the output: {error}") from error
        except BaseException:
            writer.abort()
            raise
        for store in stores:
            store.close()
        self.checkpoint.remove()
