"""The core job API: one call runs a whole job, the same from Python as from the command line.

``run(config)`` picks the engine, stops cleanly on SIGINT/SIGTERM (when asked to watch
them) or on a stop callback, writes the manifest and the report, and returns the
RunSummary. Every failure leaves as a BatchsentError whose ``exit_code`` says how the run
ended; the CLI only prints it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from batchsent.data.sources import names_many
from batchsent.data.storage import is_url, redact
from batchsent.engine.local.job import Progress, score_local, score_to_object
from batchsent.engine.record import RunRecord
from batchsent.engine.summary import RunSummary
from batchsent.errors import (
    BatchsentError,
    ExitCode,
    InputError,
    Interrupted,
    PublishedWithErrors,
    ScoringError,
    first_line,
)
from batchsent.settings.naming import check_distinct_paths
from batchsent.settings.options import JobConfig

if TYPE_CHECKING:
    from batchsent.model.classifier import Classifier


def run(
    config: JobConfig,
    *,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    classifier: Classifier | Sequence[Classifier] | None = None,
    handle_signals: bool = False,
) -> RunSummary:
    """Run the job ``config`` describes and return its summary.

    ``handle_signals`` (main thread, local engine): the first SIGINT/SIGTERM stops at the
    next batch boundary, a second quits at once (a Ray run stops at the first). ``stop()`` is asked before every batch as well. A
    ready ``classifier`` (a list of them, one per model, for several models) is reused (local engine). The manifest is written also when the
    run fails; a manifest or report that cannot be written raises PublishedWithErrors,
    whose ``summary`` describes the output, which is published all the same.
    """
    started_at = time.time()
    record: RunRecord = {}
    check_distinct_paths(config)  # before the try: a manifest that would land on an input is never written
    watcher = _SignalWatcher(progress) if handle_signals and config.engine == "local" else None
    try:
        with watcher or contextlib.nullcontext():
            summary = _engine(config, progress, _either(stop, watcher), classifier, record)
    except (Exception, KeyboardInterrupt) as error:
        failure = _as_batchsent_error(error, record, watcher, config)
        failure.args = (redact(str(failure)),)  # Python callers see no credentials either
        _write_manifest_after_failure(config, record, started_at, failure)
        if failure is error:
            raise
        raise failure from error
    problems = _write_manifest(config, record, started_at, summary, ExitCode.OK, None)
    problems += _write_report(config, summary)
    if problems:
        raise PublishedWithErrors(
            f"{'; '.join(problems)} (the output {summary.output} is complete and published)", summary
        )
    return summary


def _engine(
    config: JobConfig,
    progress: Progress | None,
    stop: Callable[[], bool] | None,
    classifier: Classifier | Sequence[Classifier] | None,
    record: RunRecord,
) -> RunSummary:
    if config.engine == "ray":
        from batchsent.engine.ray.driver import run_ray

        return run_ray(config, record, progress)
    if names_many(config.input):
        from batchsent.engine.local.folders import score_files

        return score_files(config, progress=progress, classifier=classifier, stop=stop, record=record)
    if is_url(config.output_path):
        return score_to_object(config, progress=progress, classifier=classifier, stop=stop, record=record)
    return score_local(config, progress=progress, classifier=classifier, stop=stop, record=record)


def _either(stop: Callable[[], bool] | None, watcher: _SignalWatcher | None) -> Callable[[], bool] | None:
    if watcher is None:
        return stop
    if stop is None:
        return watcher.requested
    return lambda: watcher.requested() or stop()


def committed_hint(record: RunRecord, advice: str) -> str:
    """``; N rows are committed: <advice>`` when an interrupted run left progress behind."""
    state = record.get("state")
    if state is None or not state.chunks:
        return ""
    return f"; {state.rows:,} rows are committed: {advice}"


def _restart_advice(config: JobConfig, record: RunRecord, cause: BaseException | None) -> str | None:
    """What to run after a failure or interruption that ``--resume`` cannot continue (None: it can).

    An object-storage output is staged in a temporary folder that goes with the run, and
    the folder form refuses --resume for a URL prefix; rows committed from an input that
    turned out to be bad cannot be resumed from the fixed (so changed) input.
    """
    state, folder_run = record.get("state"), names_many(config.input)
    if config.engine == "ray":  # the parts scored so far stay beside the output, on object storage too
        if record.get("ray_progress") and not isinstance(cause, InputError):
            return "; the rows scored so far are kept: run the same command with --resume to continue"
        if record.get("ray_progress"):
            return (
                "; the input is at fault, so fix it and run the same command with --overwrite (--resume "
                "continues only from an unchanged input)"
            )
        return None
    if is_url(config.output if folder_run else config.output_path):
        if folder_run and state is not None and state.chunks:
            return (
                "; files finished so far were uploaded: run the same command with --overwrite to score them all again"
            )
        return "; nothing was uploaded: run the same command again (an object-storage output cannot be resumed)"
    if isinstance(cause, InputError):
        return (
            committed_hint(
                record,
                "the input is at fault, so fix it and run the same command with --overwrite "
                "(--resume continues only from an unchanged input)",
            )
            or None
        )
    return None


def _as_batchsent_error(
    error: BaseException, record: RunRecord, watcher: _SignalWatcher | None, config: JobConfig
) -> BatchsentError:
    """Any way a run can end badly, as one BatchsentError with its exit code and advice that works."""
    restart = _restart_advice(config, record, error.__cause__ if isinstance(error, BatchsentError) else None)
    if isinstance(error, Interrupted):
        signum = watcher.signal if watcher is not None else error.signum
        name = signal.Signals(signum).name if signum else "a stop request"
        hint = restart or committed_hint(record, "run the same command with --resume to continue")
        return Interrupted(f"interrupted by {name}{hint}", signum)
    if isinstance(error, KeyboardInterrupt):
        hint = restart or committed_hint(record, "run the same command with --resume to continue")
        return Interrupted(f"interrupted; no output was written{hint}")
    if isinstance(error, BatchsentError):
        if error.exit_code != ExitCode.FAILED:
            return error
        hint = restart or committed_hint(record, "run the same command with --resume once the cause is fixed")
        return ScoringError(f"{first_line(error)}{hint}") if hint else error
    hint = restart or committed_hint(record, "run the same command with --resume once the cause is fixed")
    return ScoringError(f"{type(error).__name__}: {first_line(error)}{hint}")


def _write_manifest(
    config: JobConfig,
    record: RunRecord,
    started_at: float,
    summary: RunSummary | None,
    exit_code: int,
    error: str | None,
) -> list[str]:
    """Write the manifest if one was asked for; returns what went wrong, as messages."""
    if config.manifest is None:
        return []
    from batchsent.engine.manifest import build_manifest, write_manifest

    try:
        write_manifest(
            config.manifest, build_manifest(config, record, summary, started_at, time.time(), exit_code, error)
        )
    except OSError as problem:
        return [f"cannot write the manifest {config.manifest}: {problem}"]
    return []


def _write_manifest_after_failure(
    config: JobConfig, record: RunRecord, started_at: float, failure: BatchsentError
) -> None:
    problems = _write_manifest(config, record, started_at, None, failure.exit_code, first_line(failure))
    if problems:  # the run's own error is what the user must see first; the manifest's follows it
        failure.args = (f"{first_line(failure)}; and {problems[0]}",)


def _write_report(config: JobConfig, summary: RunSummary) -> list[str]:
    if config.report is None:
        return []
    from batchsent.report.page import build_report
    from batchsent.report.stats import ReportOptions

    try:
        prefixes = tuple(model.prefix for model in config.scoring_models())
        build_report(
            summary.output, config.report, ReportOptions(text=config.column, prefixes=prefixes), summary.truncated
        )
    except BatchsentError as problem:
        return [f"cannot write the report {config.report}: {first_line(problem)}"]
    return []


class _SignalWatcher:
    """First SIGINT/SIGTERM: stop at the next batch boundary; a second one quits at once."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        if self.progress is not None:
            self.progress.note(
                f"{signal.Signals(signum).name}: stopping after the current batch (Ctrl-C again quits now)"
            )

    def __enter__(self) -> _SignalWatcher:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
