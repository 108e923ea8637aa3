"""The local engine: reader -> chunks -> Classifier -> prediction columns -> committed parts -> output.

Reading and tokenizing the next chunk runs in one background thread while the model
scores the current one (a queue of bounded depth keeps memory flat and order intact).
Every check that needs no model runs before the model loads. ``runner.run`` wraps this
with signals, the manifest and the report.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchsent import __version__
from batchsent.cache.reuse import ChunkPlan, ReuseCounts, RunReuse, model_description, row_digests
from batchsent.cache.store import PredictionCache
from batchsent.data import formats, readers, writers
from batchsent.engine.checks import (
    check_model_columns,
    check_new_columns,
    check_output,
    check_reader,
)
from batchsent.engine.fingerprint import loaded_model_key, options_key
from batchsent.engine.record import RunRecord, lift_single_model
from batchsent.engine.summary import ModelTotals, RunSummary, RunTotals, build_summary
from batchsent.errors import BatchsentError, InputError, OutputError, ScoringError, UsageError, first_line
from batchsent.model.postprocess import column_names, output_fields, prediction_arrays
from batchsent.settings.options import JobConfig, ScoringModel
from batchsent.state.checkpoint import Checkpoint, CommittedState, ResumeMismatch, first_difference, no_model_counts
from batchsent.state.identity import input_fingerprint
from batchsent.state.lock import OutputLock, output_lock

if TYPE_CHECKING:
    from batchsent.model.classifier import Classifier, Scores
    from batchsent.model.encoding import EncodedChunk


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
        except BaseException as error:
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


def _fingerprint(config: JobConfig, output: Path) -> dict[str, Any]:
    """What the committed rows depend on, before the models load (the models are added after)."""
    options = options_key(config, formats.file_format(output, output=True), replayed=True)
    return {"input": input_fingerprint(config.input), "options": options}


def score_local(
    config: JobConfig,
    progress: Progress | None = None,
    classifier: Classifier | Sequence[Classifier] | None = None,
    stop: Callable[[], bool] | None = None,
    record: RunRecord | None = None,
) -> RunSummary:
    """Score ``config.input`` into ``config.output_path`` and return what was done.

    Each chunk is committed to a progress folder beside the output; the output itself
    appears, complete, only at the end. ``config.resume`` continues an interrupted run.
    Each distinct text is scored once per model; ``config.cache`` keeps its probabilities
    for later runs. With several models (``config.models``) the file is read and written
    once, and models with the same tokenizer share each chunk's tokenization. ``stop()`` is
    asked before every batch: when it returns True the job raises ``Interrupted``, its
    committed progress kept. ``record`` (a dict) is filled with what a run manifest
    reports, also when the job fails. Ready classifiers (one per model, in order) may be
    passed to reuse loaded models across jobs. The output's lock is held throughout.
    """
    started = time.monotonic()
    record = RunRecord() if record is None else record
    output = check_output(config)
    with OutputLock(output):
        writers.remove_stale_partials(output)  # a run killed while writing the output left its copy
        checkpoint = _checkpoint_for(config, output)
        reader = readers.open_reader(config.input)
        stores: list[PredictionCache] = []
        try:
            job = _prepare(config, output, reader, checkpoint, classifier, record, progress, stores)
            job.score(progress, stop)
            job.finish(output, stores)
        finally:
            reader.close()
            for store in stores:
                store.close()
    return job.summary(output, time.monotonic() - started)


def score_to_object(
    config: JobConfig,
    progress: Progress | None = None,
    classifier: Classifier | Sequence[Classifier] | None = None,
    stop: Callable[[], bool] | None = None,
    record: RunRecord | None = None,
    locked: bool = False,
) -> RunSummary:
    """An object-storage output: the job writes a local staging copy, uploaded in one go once complete.

    Nothing appears under the output name before the upload completes; a failed run
    uploads nothing (the staging folder, under $TMPDIR, is removed either way). The output's
    lease is held throughout (``locked``: the caller, a folder run, holds its folder's).
    """
    from batchsent.data.storage import check_writable, remote, upload

    record = RunRecord() if record is None else record
    formats.check_input(config.input)  # the input's own errors first
    target = remote(str(config.output_path), OutputError)
    formats.file_format(target.url, output=True)
    check_writable(target, config.overwrite)  # the bucket's and the object's own errors first
    record["output"] = target.url
    with (
        contextlib.nullcontext() if locked else output_lock(target.url) as lock,
        tempfile.TemporaryDirectory(prefix="batchsent-") as staging,
    ):
        check_writable(target, config.overwrite)  # again under the lease: another run may have published meanwhile
        local = Path(staging) / target.name
        summary = score_local(
            replace(config, output=local), progress=progress, classifier=classifier, stop=stop, record=record
        )
        if lock is not None:
            lock.check()
        upload(local, target)
    return replace(summary, output=target.url)


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


def _prepare(
    config: JobConfig,
    output: Path,
    reader: readers.Reader,
    checkpoint: Checkpoint,
    classifier: Classifier | Sequence[Classifier] | None,
    record: RunRecord,
    progress: Progress | None,
    stores: list[PredictionCache],
) -> _Job:
    """Every check of the input, the resume state and the cache, the models, and the output schema: a job
    ready to score. Stores opened are appended to ``stores`` (the caller closes them)."""
    column, pair = check_reader(config, reader, config.input)
    formats.check_output_schema(reader.schema, output, config.input)
    wanted = config.scoring_models()
    fingerprint = _fingerprint(config, output)
    state = checkpoint.load() if config.resume and checkpoint.exists() else None
    if state is not None:
        _check_resumable(state.fingerprint, fingerprint, ("input", "options"))
    if config.cache is not None:  # opened, checked and written to before the models load
        stores.append(PredictionCache(config.cache))
        run_id = stores[0].start_run(__version__)
    classifiers = load_classifiers(config, classifier, record, progress)
    identities = [loaded.identity for loaded in classifiers]
    prints = [loaded_model_key(identity, loaded, replayed=True) for identity, loaded in zip(identities, classifiers)]
    _record_models(record, wanted, classifiers, prints)
    fingerprint["model"] = prints[0] if wanted[0].name is None else {m.name: p for m, p in zip(wanted, prints)}
    if state is not None:
        _check_resumable(state.fingerprint, fingerprint, ("model",))
    names = [
        column_names(loaded.labels, model.prefix, config.all_scores, loaded.long_text == "chunk")
        for model, loaded in zip(wanted, classifiers)
    ]
    check_model_columns(names, wanted)  # the label-named columns (--all-scores) are known only now
    check_new_columns(
        [name for group in names for name in group], reader.schema, config.input, wanted[0].name is not None
    )
    if isinstance(reader, readers.JsonLinesReader):
        reader.reserved = {name for group in names for name in group}  # checked on every line as it is read
    schema = reader.schema
    for model, loaded in zip(wanted, classifiers):
        for new_field in output_fields(loaded.labels, model.prefix, config.all_scores, loaded.long_text == "chunk"):
            schema = schema.append(new_field)
    if state is None:
        state = checkpoint.start(fingerprint)
    record["state"], record["resumed_from_rows"] = state, state.rows
    if config.cache is None:
        stores.append(PredictionCache(checkpoint.dedupe_store))
        run_id = stores[0].start_run(__version__)
    store = stores[0]
    models = []
    for model, loaded, identity in zip(wanted, classifiers, identities):
        description = model_description(loaded, identity, pair is not None)
        reuse = RunReuse(
            store,
            store.register(model.options.model, description, loaded.labels),
            run_id,
            shared=config.cache is not None,
        )
        models.append(_Model(model.name, model.prefix, loaded, reuse))
    return _Job(config, reader, column, pair, models, schema, checkpoint, state, record)


def _record_models(
    record: RunRecord, wanted: list[ScoringModel], classifiers: list[Classifier], prints: list[dict[str, Any]]
) -> None:
    """What the manifest says of the models: one entry per model, and the single model's keys at the top."""
    entries = [
        {
            "name": model.name,
            "id": model.options.model,
            "model": fingerprint,
            "labels": loaded.labels,
            "device": str(loaded.device),
            "dtype": loaded.dtype,
            "variant": loaded.variant,
            "precision_basis": loaded.tuning.basis() if loaded.tuning is not None else None,
        }
        for model, loaded, fingerprint in zip(wanted, classifiers, prints)
    ]
    record["models"] = entries
    if wanted[0].name is None:
        lift_single_model(record, entries[0])


def load_classifiers(
    config: JobConfig,
    given: Classifier | Sequence[Classifier] | None,
    record: RunRecord,
    progress: Progress | None,
) -> list[Classifier]:
    """The job's Classifiers, one per model in column order (loaded now unless given); the load time recorded and noted."""
    started = time.monotonic()
    wanted = config.scoring_models()
    if given is None:
        from batchsent.model.classifier import Classifier

        # With --cache, the weights wait for the first row the cache does not hold: a night whose rows are
        # all cached never loads them (the cache key comes from the model's files, not from its weights).
        notes = progress.note if progress is not None else None
        classifiers = [Classifier(model.options, weights=config.cache is None, notes=notes) for model in wanted]
    else:
        classifiers = [given] if not isinstance(given, Sequence) else list(given)
        if len(classifiers) != len(wanted):
            raise UsageError(f"{len(classifiers)} classifiers given for {len(wanted)} models")
    record["load_seconds"] = time.monotonic() - started
    if progress is not None and all(loaded.weights_loaded for loaded in classifiers):
        progress.loaded(record["load_seconds"], _where(wanted, classifiers))
    return classifiers


def _where(wanted: list[ScoringModel], classifiers: list[Classifier]) -> str:
    places = [loaded.where for loaded in classifiers]
    if len(places) == 1:
        return places[0]
    if len(set(places)) == 1:
        return f"{len(places)} models, {places[0]}"
    return "; ".join(f"{model.name}: {place}" for model, place in zip(wanted, places))


def _check_resumable(old: dict[str, Any], new: dict[str, Any], parts: tuple[str, ...]) -> None:
    for part in parts:
        changed = first_difference(old.get(part, {}), new.get(part, {}), f"{part}.")
        if changed:
            raise ResumeMismatch(
                f"cannot resume: {changed} changed since the interrupted run; pass --overwrite to start over"
            )


@dataclass
class _Model:
    """One model of a run: its column prefix, Classifier, and view of the store."""

    name: str | None  # None in a single-model run
    prefix: str
    classifier: Classifier
    reuse: RunReuse

    @property
    def called(self) -> str:
        """How messages name this model: "the model", or "the model NAME" in a multi-model run."""
        return f"the model {self.name}" if self.name else "the model"


@dataclass
class _Job:
    """The scoring loop of one run, over the chunks not yet committed."""

    config: JobConfig
    reader: readers.Reader
    column: int
    pair: int | None  # --pair-column's index
    models: list[_Model]
    schema: pa.Schema
    checkpoint: Checkpoint
    state: CommittedState
    record: RunRecord

    def _encoded(self) -> Iterator[tuple[pa.RecordBatch, list[ChunkPlan], list[EncodedChunk], int | None]]:
        """Each chunk not yet committed, planned against the store for every model, its new texts tokenized
        (once for the models that share a tokenizer)."""
        from batchsent.model.encoding import encode_each

        classifiers = [model.classifier for model in self.models]
        for index, batch in enumerate(self.reader.batches(self.config.chunk_rows)):
            if index < self.state.chunks:
                continue  # committed by an earlier run
            texts = readers.text_values(batch.column(self.column))
            pairs = None if self.pair is None else readers.text_values(batch.column(self.pair))
            digests = row_digests(texts, pairs)
            plans = [self._planned(model, texts, pairs, digests) for model in self.models]
            chunks = encode_each(classifiers, [(plan.model_texts, plan.model_pairs) for plan in plans])
            yield batch, plans, chunks, self.reader.estimated_rows()

    def _planned(
        self, model: _Model, texts: list[str | None], pairs: list[str | None] | None, digests: list[bytes | None]
    ) -> ChunkPlan:
        try:
            return model.reuse.plan(texts, pairs, digests)
        except sqlite3.Error as error:
            raise ScoringError(
                f"cache {model.reuse.store.path}: cannot read: {first_line(error)}; if it is damaged, "
                "move it aside and run again (batchsent cache stats checks it)"
            ) from error

    def _advance(self, progress: Progress, rows_done: int, estimated_rows: int | None) -> None:
        """Rows done, and the byte position they stand for (CSV: rows x the mean bytes per row read so far)."""
        total = self.reader.total_bytes
        position = total if not estimated_rows else min(total, round(total * rows_done / estimated_rows))
        progress.advance(rows_done, position)

    def score(self, progress: Progress | None, stop: Callable[[], bool] | None) -> None:
        state, count = self.state, len(self.models)
        if progress is not None:
            progress.start(self.reader.total_rows, self.reader.total_bytes)
        try:
            for batch, plans, chunks, estimated_rows in _prefetched(self._encoded(), PREFETCH_DEPTH):
                results = []
                for position, (model, plan, chunk) in enumerate(zip(self.models, plans, chunks)):
                    report = None
                    if progress is not None:

                        def report(
                            share: float,
                            position: int = position,
                            rows_before: int = state.rows,
                            batch_rows: int = batch.num_rows,
                            estimated_rows: int | None = estimated_rows,
                        ) -> None:
                            done = (position + share) / count
                            self._advance(progress, rows_before + int(done * batch_rows), estimated_rows)

                    results.append(self._completed(model, plan, self._run_model(model, chunk, stop, report, progress)))
                self._commit(batch, results)
                if progress is not None:
                    self._advance(progress, state.rows, estimated_rows)
            for model in self.models:
                if progress is not None and not model.classifier.weights_loaded:
                    progress.note(f"{model.called} was not loaded: every row came from the cache")
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

    def _run_model(
        self,
        model: _Model,
        chunk: EncodedChunk,
        stop: Callable[[], bool] | None,
        report: Callable[[float], None] | None,
        progress: Progress | None,
    ) -> Scores:
        """One Classifier on one chunk (its weights loaded now if this is the first chunk that needs them);
        a failure of the model itself becomes a ScoringError."""
        if chunk.batches and not model.classifier.weights_loaded:
            seconds = model.classifier.load_weights()
            self.record["load_seconds"] = self.record.get("load_seconds", 0.0) + seconds
            if progress is not None:
                progress.note(
                    f"{model.called} loaded in {seconds:.1f} s for the rows the cache does not hold "
                    f"({model.classifier.where})"
                )
        try:
            return model.classifier.run(chunk, stop=stop, on_batch=report)
        except (BatchsentError, KeyboardInterrupt):
            raise
        except Exception as error:
            raise ScoringError(f"{model.called} failed: {type(error).__name__}: {first_line(error)}") from error

    def _completed(self, model: _Model, plan: ChunkPlan, scores: Scores) -> tuple[Scores, ReuseCounts]:
        """Every row's scores (the reused ones filled in), the new texts stored before the chunk commits."""
        try:
            return model.reuse.complete(plan, scores)
        except sqlite3.Error as error:
            raise ScoringError(f"cache {model.reuse.store.path}: cannot write: {first_line(error)}") from error

    def _commit(self, batch: pa.RecordBatch, results: list[tuple[Scores, ReuseCounts]]) -> None:
        """Make one scored chunk durable in the progress folder: every model's columns after the input's."""
        columns, truncated = list(batch.columns), np.zeros(batch.num_rows, dtype=bool)
        counts = CommittedState({}, 1, batch.num_rows, int(results[0][0].blank.sum()))
        for model, (scores, reused) in zip(self.models, results):
            arrays = prediction_arrays(
                scores.probabilities, model.classifier.labels, self.config.all_scores, scores.windows
            )
            columns += arrays
            truncated |= scores.truncated
            labels = {entry["values"]: entry["counts"] for entry in pc.value_counts(arrays[0].drop_null()).to_pylist()}
            counts.cached += reused.cached
            counts.duplicates += reused.duplicates
            if model.name is None:
                counts.label_counts = labels
            else:
                counts.models[model.name] = {
                    "truncated": int(scores.truncated.sum()),
                    "label_counts": labels,
                    "cached": reused.cached,
                    "duplicates": reused.duplicates,
                }
        counts.truncated = int(truncated.sum())
        try:
            self.checkpoint.commit(self.state, pa.RecordBatch.from_arrays(columns, schema=self.schema), counts)
        except OSError as error:
            raise ScoringError(f"cannot save progress in {self.checkpoint.directory}: {error}") from error

    def finish(self, output: Path, stores: list[PredictionCache]) -> None:
        """Assemble the output from the committed parts, rename it into place, drop the progress
        (the ``stores`` closed first: the private one lives in the progress folder)."""
        writer = writers.AtomicWriter(output, self.schema)
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

    def summary(self, output: Path, elapsed: float) -> RunSummary:
        state = self.state
        if self.models[0].name is None:
            per_model = [ModelTotals(state.label_counts)]
        else:
            per_model = [ModelTotals(**state.models.get(str(model.name), no_model_counts())) for model in self.models]
        totals = RunTotals(state.rows, state.empty, state.truncated, state.cached, state.duplicates, per_model)
        return build_summary(
            self.config,
            output,
            totals,
            elapsed,
            self.record,
            [model.classifier.where for model in self.models],
            any(model.classifier.weights_loaded for model in self.models),
        )
