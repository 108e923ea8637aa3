"""The local engine over a folder or glob: one output per input file, under the same relative name.

Each file is one ``score_local`` job (its output appears atomically, its chunks are
committed for ``--resume``), all with one loaded Classifier and one progress display.
Every check that needs no model runs on every file before the model loads. The files
finished so far are listed, with their input fingerprints and counts, in
``.<output folder>.batchsent-files.json`` beside the output folder until the whole run
ends, so ``--resume`` skips them and continues the one in progress.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchsent.data import formats, readers, writers
from batchsent.data.sources import InputFiles, expand
from batchsent.data.storage import check_writable, is_url, remote
from batchsent.engine.checks import check_output, check_reader
from batchsent.engine.local.job import Progress, load_classifiers, score_local, score_to_object
from batchsent.engine.record import RunRecord, copy_model_facts
from batchsent.engine.summary import ModelTotals, RunSummary, RunTotals, build_summary
from batchsent.errors import InputError, OutputError, ScoringError, first_line
from batchsent.settings.naming import default_output_folder, finished_list
from batchsent.settings.options import JobConfig
from batchsent.state.checkpoint import CommittedState, damaged
from batchsent.state.identity import input_fingerprint
from batchsent.state.lock import output_lock

if TYPE_CHECKING:
    from collections.abc import Callable

    from batchsent.model.classifier import Classifier

DONE_VERSION = 2


class _Finished:
    """The files of an interrupted folder run that are complete: ``{relative name: record}``.

    Kept in memory only for an object-storage output folder (``output`` None), where --resume is refused.
    """

    def __init__(self, output: Path | None) -> None:
        self.path = None if output is None else finished_list(output)
        self.files: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        if self.path is None:  # an object-storage output keeps no list of finished files
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise damaged(self.path, first_line(error)) from None
        if not isinstance(raw, dict) or not isinstance(raw.get("files"), dict):
            raise damaged(self.path, "it lists no files")
        if raw.get("version") != DONE_VERSION:
            raise OutputError(f"{self.path}: progress from another batchsent version; pass --overwrite")
        self.files = raw["files"]

    def add(self, relative: Path, fingerprint: dict[str, Any], summary: RunSummary) -> None:
        self.files[str(relative)] = {
            "input": fingerprint,
            "rows": summary.rows,
            "scored": summary.scored,
            "empty": summary.empty,
            "truncated": summary.truncated,
            "label_counts": summary.label_counts,
            "cached": summary.cached,
            "duplicates": summary.duplicates,
            "models": [asdict(model) for model in summary.models],
        }
        if self.path is None:
            return
        with writers.atomic_file(self.path) as temporary:
            temporary.write_text(json.dumps({"version": DONE_VERSION, "files": self.files}, indent=1))

    def done(self, relative: Path, source: Path, output: Path) -> dict[str, Any] | None:
        entry = self.files.get(str(relative))
        if entry is None or not output.exists() or entry["input"] != input_fingerprint(source):
            return None
        return entry

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _Combined:
    """One progress display over several files: rows and bytes of the finished files added to the current one's."""

    def __init__(self, progress: Progress, total_rows: int | None, total_bytes: int) -> None:
        self.progress, self.total_rows, self.total_bytes = progress, total_rows, total_bytes
        self.rows_before = self.bytes_before = 0
        self._started = self._loaded = False

    def loaded(self, seconds: float, where: str) -> None:
        if not self._loaded:
            self._loaded = True
            self.progress.loaded(seconds, where)

    def start(self, total_rows: int | None, total_bytes: int) -> None:
        if not self._started:
            self._started = True
            self.progress.start(self.total_rows, self.total_bytes)

    def advance(self, rows_done: int, bytes_done: int) -> None:
        self.progress.advance(self.rows_before + rows_done, self.bytes_before + bytes_done)

    def file_done(self, rows: int, size: int) -> None:
        self.rows_before += rows
        self.bytes_before += size
        self.progress.advance(self.rows_before, self.bytes_before)

    def note(self, message: str) -> None:
        self.progress.note(message)

    def close(self) -> None:
        pass  # the run closes the real display once, at the end


def score_files(
    config: JobConfig,
    progress: Progress | None = None,
    classifier: Classifier | Sequence[Classifier] | None = None,
    stop: Callable[[], bool] | None = None,
    record: RunRecord | None = None,
) -> RunSummary:
    """Score every file of the folder or glob ``config.input`` into the folder ``config.output``."""
    started = time.monotonic()
    record = RunRecord() if record is None else record
    inputs = expand(config.input)
    remote_output = is_url(config.output)
    if remote_output:  # a URL prefix; each object is uploaded once its file is complete (no lock, no --resume)
        output: Path | str = str(config.output).rstrip("/")
        remote(f"{output}/", OutputError).info(OutputError)
    else:
        output = Path(config.output).expanduser() if config.output is not None else default_output_folder(inputs)
        _check_folders(output)
    record["output"] = output
    with output_lock(output):
        finished = _Finished(None if remote_output else output)  # type: ignore[arg-type]
        if finished.exists():
            if config.resume:
                finished.load()
            elif not config.overwrite:
                raise OutputError(
                    f"{output}: an interrupted run left finished files; pass --resume to continue it "
                    "or --overwrite to start over"
                )
            else:
                finished.remove()
        jobs = _plan(config, inputs, output, finished)
        rows = [file.rows for file in jobs]
        total_rows = None if None in rows else sum(rows)  # type: ignore[arg-type]
        shown = _Combined(progress, total_rows, sum(file.size for file in jobs)) if progress is not None else None
        if classifier is None and any(file.done is None for file in jobs):
            classifier = load_classifiers(config, None, record, shown)  # once, after every file passed its checks
        try:
            files = _score_each(jobs, inputs, output, finished, classifier, shown, stop, record)
        except BaseException as error:
            record["state"] = _committed_so_far(finished, record.get("current", {}))
            if isinstance(error, InputError) and record["state"].chunks:  # a file went bad after others finished
                raise ScoringError(str(error)) from error
            raise
        finally:
            if shown is not None:
                shown.progress.close()
        finished.remove()
    record["files"] = len(jobs)
    return _combined_summary(config, output, files, time.monotonic() - started, record)


def _score_each(
    jobs: list[_FileJob],
    inputs: InputFiles,
    output: Path | str,
    finished: _Finished,
    classifier: Classifier | Sequence[Classifier] | None,
    shown: _Combined | None,
    stop: Callable[[], bool] | None,
    record: RunRecord,
) -> list[dict[str, Any]]:
    """Score the files not finished yet, in order; each one's counts (finished ones' from the record)."""
    files, resumed = [], 0
    for file in jobs:
        source, job, done = file.source, file.job, file.done
        if done is None:
            file_record: RunRecord = {}
            record["current"] = file_record  # before anything can fail: a failure counts this file's rows only
            relative = inputs.relative(source)
            fingerprint = _fingerprint_of(source)
            if isinstance(output, str):
                summary = score_to_object(
                    job, progress=shown, classifier=classifier, stop=stop, record=file_record, locked=True
                )
            else:
                (output / relative).parent.mkdir(parents=True, exist_ok=True)
                summary = score_local(job, progress=shown, classifier=classifier, stop=stop, record=file_record)
            copy_model_facts(file_record, record)
            resumed += file_record.get("resumed_from_rows", 0)
            finished.add(relative, fingerprint, summary)
            record["current"] = {}  # its rows are counted as a finished file's now
            done = finished.files[str(relative)]
        else:
            resumed += done["rows"]
        files.append(done)
        if shown is not None:
            shown.file_done(done["rows"], file.size)
    record["resumed_from_rows"] = resumed
    return files


def _fingerprint_of(source: Path | str) -> dict[str, Any]:
    """The input's fingerprint; a file that disappeared since the run listed it is an InputError."""
    try:
        return input_fingerprint(source)
    except FileNotFoundError:
        raise InputError(f"{source}: no such file (it was listed when the run started)") from None
    except OSError as error:
        raise InputError(f"{source}: cannot read ({first_line(error)})") from error


def _committed_so_far(finished: _Finished, current: RunRecord) -> CommittedState:
    """What a failed or interrupted folder run leaves for --resume: finished files and the current one's chunks."""
    state = current.get("state")
    rows = sum(entry["rows"] for entry in finished.files.values()) + (state.rows if state is not None else 0)
    chunks = len(finished.files) + (state.chunks if state is not None else 0)
    return CommittedState({}, chunks, rows)


def _check_folders(output: Path) -> None:
    """The output folder's own checks (its place against the inputs is the path rule's, ``settings.naming``)."""
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: exists and is not a folder; a folder or glob INPUT needs an output folder")
    if not output.parent.is_dir():
        raise OutputError(f"{output}: the folder {output.parent} does not exist")


@dataclass
class _FileJob:
    """One file of the run: its job, or its finished record; its size and row count (None: unknown yet)."""

    source: Path | str
    job: JobConfig
    done: dict[str, Any] | None
    size: int
    rows: int | None


def _plan(config: JobConfig, inputs: InputFiles, output: Path | str, finished: _Finished) -> list[_FileJob]:
    """Each file's job, or its finished record; every file's input and output checked before any model loads
    (each input opened once here, which also gives the sizes and Parquet row counts progress needs)."""
    jobs = []
    for source in inputs.files:
        relative = inputs.relative(source)
        target: Path | str = f"{output}/{relative.as_posix()}" if isinstance(output, str) else output / relative
        job = replace(config, input=source, output=target, manifest=None, report=None)
        done = finished.done(relative, source, target) if config.resume else None  # type: ignore[arg-type]
        if done is not None:
            jobs.append(_FileJob(source, job, done, inputs.size(source), done["rows"]))
        else:
            if isinstance(target, str):
                check_writable(remote(target, OutputError), config.overwrite)
            elif target.parent.is_dir():
                check_output(job)
            reader = readers.open_reader(source)
            try:
                check_reader(config, reader, source)
                formats.check_output_schema(reader.schema, target, source)
                jobs.append(_FileJob(source, job, None, reader.total_bytes, reader.total_rows))
            finally:
                reader.close()
    return jobs


def _combined_summary(
    config: JobConfig, output: Path | str, files: list[dict[str, Any]], elapsed: float, record: RunRecord
) -> RunSummary:
    """One summary for the whole run: every file's counts added up (summary.build_summary orders the labels)."""
    totals = RunTotals(
        *(sum(entry[key] for entry in files) for key in ("rows", "empty", "truncated", "cached", "duplicates"))
    )
    wanted = config.scoring_models()
    if wanted[0].name is None:
        only = ModelTotals()
        for entry in files:
            only.add_labels(entry["label_counts"])
        totals.models = [only]
        where = [f"{record.get('device', '')}, {record.get('variant', '')}" if record.get("device") else ""]
    else:
        by_name = {model.name: ModelTotals() for model in wanted}
        wheres = {model.name: "" for model in wanted}
        for entry in files:
            for model in entry.get("models", []):
                total = by_name[model["name"]]
                total.truncated += model["truncated"]
                total.cached += model["cached"]
                total.duplicates += model["duplicates"]
                total.add_labels(model["label_counts"])
                wheres[model["name"]] = wheres[model["name"]] or model.get("where", "")
        totals.models = list(by_name.values())
        where = list(wheres.values())
    return build_summary(config, output, totals, elapsed, record, where)
