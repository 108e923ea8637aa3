"""The ``batchsent`` command: flags -> JobConfig -> job.run, errors -> one line + exit code."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback as tb
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .config import DEFAULT_CHUNK_ROWS, DEFAULT_MODEL, build_config
from .device import CPU_LIMITS, CUDA_LIMITS
from .errors import BatchsentError, Interrupted, first_line
from .job import run
from .manifest import build_manifest, write_manifest
from .report import ReportOptions
from .progress import BarProgress, LogProgress

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_SIGTERM = 0, 1, 2, 130, 143

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show "[default: ...]" and "batchsent[onnx]" literally
    help="Score text columns of CSV, TSV and Parquet files with a Hugging Face text classifier.",
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"batchsent {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Score text columns of CSV, TSV and Parquet files with a Hugging Face text classifier."""


def _quiet_libraries() -> None:
    """Keep transformers' and the Hub's own bars and warnings off the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@app.command()
def score(
    input: Annotated[
        Optional[Path],
        typer.Argument(help="CSV, TSV or Parquet file to score (or input = ... in --config).", show_default=False),
    ] = None,
    column: Annotated[Optional[str], typer.Option("-c", "--column", help="Text column to score. [default: text]")] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "-o", "--output", help="Output file; its suffix picks the format. [default: INPUT_STEM.scored.SUFFIX]"
        ),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(help=f"Hub id or local model directory. [default: $BATCHSENT_MODEL or {DEFAULT_MODEL}]"),
    ] = None,
    revision: Annotated[
        Optional[str], typer.Option(help="Hub branch, tag or commit to pin the model to. [default: main]")
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(help=f"Most rows in one model batch. [default: {CPU_LIMITS.rows} on CPU, {CUDA_LIMITS.rows} on CUDA]"),
    ] = None,
    token_budget: Annotated[
        Optional[int],
        typer.Option(
            help="Most padded tokens (rows x longest row) in one batch. "
            f"[default: {CPU_LIMITS.tokens} on CPU, {CUDA_LIMITS.tokens} on CUDA]"
        ),
    ] = None,
    max_length: Annotated[
        Optional[int], typer.Option(help="Truncate texts to this many tokens. [default: the model's limit]")
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps. [default: auto]")] = None,
    dtype: Annotated[
        Optional[str],
        typer.Option(help="auto, float32, float16 or bfloat16. [default: auto = float16 on CUDA, float32 elsewhere]"),
    ] = None,
    backend: Annotated[
        Optional[str], typer.Option(help="torch, or onnx (ONNX Runtime; pip install 'batchsent[onnx]'). [default: torch]")
    ] = None,
    quantize: Annotated[
        Optional[str],
        typer.Option(help="int8: the encoder's Linear layers as int8 products, per-token activation scales (CPU). "
                     "[default: off]"),  # fmt: skip
    ] = None,
    precision: Annotated[
        Optional[str],
        typer.Option(help="exact (float32), or fast: the variant measured fastest on this CPU class or GPU with "
                     "99.5%+ of float32's labels (batchsent info shows it). [default: --dtype and --quantize as given]"),  # fmt: skip
    ] = None,
    threads: Annotated[
        Optional[int], typer.Option(help="Torch intra-op threads. [default: torch's own choice]")
    ] = None,
    prefix: Annotated[
        Optional[str], typer.Option(help="Prefix of the prediction columns. [default: sentiment_]")
    ] = None,
    all_scores: Annotated[
        Optional[bool],
        typer.Option("--all-scores/--no-all-scores", help="Add one PREFIXscore_LABEL column per label.", show_default=False),
    ] = None,
    long_text: Annotated[
        Optional[str],
        typer.Option(help="truncate: score the first --max-length tokens; chunk: score every token in windows. [default: truncate]"),
    ] = None,
    stride: Annotated[
        Optional[int], typer.Option(help="With --long-text chunk: tokens shared by consecutive windows. [default: 64]")
    ] = None,
    aggregate: Annotated[
        Optional[str],
        typer.Option(help="With --long-text chunk: mean, max (most confident window) or first. [default: mean]"),
    ] = None,
    chunk_rows: Annotated[
        Optional[int], typer.Option(help=f"Rows read, sorted and written together. [default: {DEFAULT_CHUNK_ROWS}]")
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", help="TOML job file; flags override its values.")
    ] = None,
    overwrite: Annotated[
        Optional[bool], typer.Option("--overwrite/--no-overwrite", help="Replace an existing output.", show_default=False)
    ] = None,
    quiet: Annotated[
        Optional[bool], typer.Option("--quiet/--no-quiet", "-q", help="No progress; errors and summary only.", show_default=False)
    ] = None,
    report: Annotated[
        Optional[Path], typer.Option(help="Also write an HTML report of the output here at the end.")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="local, or ray (Ray Data; INPUT may be a file, folder or glob; pip install 'batchsent[ray]').")
    ] = "local",
    ray_address: Annotated[
        Optional[str], typer.Option(help="With --engine ray: the cluster to join. [default: a local Ray for this job]")
    ] = None,
    workers: Annotated[int, typer.Option(help="With --engine ray: scoring actors (each loads the model once).")] = 1,
    gpus_per_worker: Annotated[float, typer.Option(help="With --engine ray: GPUs per actor (fractions allowed).")] = 0.0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its last committed chunk.")
    ] = False,
    manifest: Annotated[
        Optional[Path], typer.Option(help="Write a JSON manifest of the run here (also when it fails).")
    ] = None,
    log_format: Annotated[
        str, typer.Option(help="text, or json (one JSON object per line) for progress, errors and the summary.")
    ] = "text",
    traceback: Annotated[bool, typer.Option("--traceback", help="Show the full traceback of an unexpected error.")] = False,
) -> None:
    """Score the text column of INPUT and write it back with prediction columns."""
    _quiet_libraries()
    if log_format not in ("text", "json"):
        _Reporter("text").fail(f"--log-format {log_format!r}: expected text or json", EXIT_USAGE)
    reporter = _Reporter(log_format)
    flags = {
        "input": input,
        "output": output,
        "column": column,
        "model": model,
        "revision": revision,
        "batch_size": batch_size,
        "token_budget": token_budget,
        "max_length": max_length,
        "device": device,
        "dtype": dtype,
        "threads": threads,
        "backend": backend,
        "quantize": quantize,
        "precision": precision,
        "prefix": prefix,
        "all_scores": all_scores,
        "chunk_rows": chunk_rows,
        "long_text": long_text,
        "stride": stride,
        "aggregate": aggregate,
        "overwrite": overwrite,
        "quiet": quiet,
        "resume": resume or None,
    }
    try:
        job = build_config(flags, config)
    except BatchsentError as error:
        reporter.fail(str(error), error.exit_code)
    if engine not in ("local", "ray"):
        reporter.fail(f"--engine {engine!r}: expected local or ray", EXIT_USAGE)
    if engine == "ray":
        _score_on_ray(reporter, job, input, ray_address, workers, gpus_per_worker, resume, manifest, report)
        return
    if ray_address is not None or workers != 1 or gpus_per_worker:
        reporter.fail("--ray-address, --workers and --gpus-per-worker need --engine ray", EXIT_USAGE)
    record: dict = {}
    started_at = time.time()
    outcome: tuple[int, str | None] = (EXIT_OK, None)
    stopper = _StopOnSignal(reporter)
    try:
        with stopper:
            summary = run(job, progress=_progress(job, log_format), stop=stopper.requested, record=record)
    except Interrupted:
        code = EXIT_SIGTERM if stopper.signal == signal.SIGTERM else EXIT_INTERRUPTED
        name = signal.Signals(stopper.signal).name if stopper.signal else "a stop request"
        outcome = (code, f"interrupted by {name}{_committed_hint(record, 'run the same command with --resume to continue')}")
    except KeyboardInterrupt:
        outcome = (EXIT_INTERRUPTED, f"interrupted; no output was written{_committed_hint(record, '--resume continues')}")
    except BatchsentError as error:
        hint = _committed_hint(record, "rerun with --resume once fixed") if error.exit_code == EXIT_FAILED else ""
        outcome = (error.exit_code, f"{first_line(str(error))}{hint}")
    except Exception as error:  # noqa: BLE001 - the one place unexpected errors become exit 1
        if traceback:
            tb.print_exc()
        hint = _committed_hint(record, "rerun with --resume once fixed")
        outcome = (EXIT_FAILED, f"{type(error).__name__}: {first_line(str(error))}{hint} (--traceback shows details)")
    if manifest is not None:
        try:
            write_manifest(manifest, build_manifest(job, record, started_at, time.time(), *outcome))
        except OSError as error:
            reporter.error(f"cannot write the manifest {manifest}: {error}")
            outcome = (outcome[0] or EXIT_FAILED, outcome[1])
    if outcome[1] is not None:
        reporter.fail(outcome[1], outcome[0])
    reporter.summary(summary)
    if report is not None:
        _write_report(reporter, summary.output, report, ReportOptions(prefix=job.prefix, text=job.column),
                      summary.truncated)  # fmt: skip


def _score_on_ray(reporter, job, input, address, workers, gpus_per_worker, resume, manifest, report) -> None:
    from .ray_engine import run_ray

    if resume or manifest is not None or report is not None:
        reporter.fail("--resume, --manifest and --report are for the local engine", EXIT_USAGE)
    try:
        summary = run_ray(job, str(input if input is not None else job.input), address, workers, gpus_per_worker)
    except BatchsentError as error:
        reporter.fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        reporter.fail("interrupted; no output was written", EXIT_INTERRUPTED)
    except Exception as error:  # noqa: BLE001 - Ray's own failures become exit 1
        reporter.fail(f"{type(error).__name__}: {first_line(str(error))}", EXIT_FAILED)
    reporter.summary(summary)


@app.command("report")
def report_command(
    scored_file: Annotated[Path, typer.Argument(help="A file written by batchsent score.", show_default=False)],
    output: Annotated[
        Optional[Path], typer.Option("-o", "--output", help="HTML file. [default: SCORED_FILE_STEM.report.html]")
    ] = None,
    by: Annotated[Optional[str], typer.Option(help="Column to break label shares down by (product, region...).")] = None,
    gold: Annotated[Optional[str], typer.Option(help="Column of human labels: accuracy, precision, recall, F1.")] = None,
    text: Annotated[Optional[str], typer.Option(help="Text column shown in examples. [default: text, if present]")] = None,
    prefix: Annotated[str, typer.Option(help="Prefix of the prediction columns.")] = "sentiment_",
    examples: Annotated[int, typer.Option(help="Example rows per table.")] = 5,
    low_confidence: Annotated[float, typer.Option(help="Scores below this count as low confidence.")] = 0.6,
) -> None:
    """Write a self-contained HTML report of a scored file: labels, scores, breakdowns, examples."""
    reporter = _Reporter("text")
    target = output or scored_file.with_name(f"{scored_file.name.split('.')[0]}.report.html")
    try:
        options = ReportOptions(prefix=prefix, by=by, gold=gold, text=text, examples=examples,
                                low_confidence=low_confidence)  # fmt: skip
    except BatchsentError as error:
        reporter.fail(str(error), error.exit_code)
    _write_report(reporter, scored_file, target, options, None)


@app.command("info")
def info_command(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of lines.")] = False,
) -> None:
    """Print this machine's CPU and its features, the torch and ONNX Runtime builds, CUDA devices,
    which variants can run here, and what --precision fast picks."""
    from .info import collect, render

    info = collect()
    typer.echo(json.dumps(info, indent=2) if as_json else "\n".join(render(info)))


def _write_report(reporter: _Reporter, scored: Path, target: Path, options, truncated: int | None) -> None:
    from .report import collect
    from .report_html import render, write_report

    if target.suffix.lower() not in (".html", ".htm"):
        reporter.fail(f"{target}: a report is an .html file", EXIT_USAGE)
    if not target.parent.is_dir():
        reporter.fail(f"{target}: the folder {target.parent} does not exist", EXIT_USAGE)
    try:
        write_report(target, render(collect(scored, options, truncated)))
    except BatchsentError as error:
        reporter.fail(str(error), error.exit_code)
    except OSError as error:
        reporter.fail(f"{target}: cannot write the report: {error}", EXIT_FAILED)
    reporter.note(f"report written to {target}")


def _committed_hint(record: dict, advice: str) -> str:
    state = record.get("state")
    if state is None or not state.chunks:
        return ""
    return f"; {state.rows:,} rows are committed: {advice}"


def _progress(job, log_format: str):
    if job.quiet:
        return None
    if sys.stderr.isatty() and log_format == "text":
        return BarProgress()
    return LogProgress(json_lines=log_format == "json")


class _Reporter:
    """Errors, notes and the summary on stderr: plain lines, or JSON objects with --log-format json."""

    def __init__(self, log_format: str) -> None:
        self.json = log_format == "json"

    def _emit(self, level: str, message: str, **fields) -> None:
        if self.json:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            typer.echo(json.dumps({"time": stamp, "level": level, "message": message, **fields}), err=True)
        else:
            typer.echo(f"{level if level != 'summary' else 'done'}: {message}", err=True)

    def note(self, message: str) -> None:
        self._emit("note", message)

    def error(self, message: str) -> None:
        self._emit("error", first_line(message))

    def fail(self, message: str, code: int) -> None:
        self.error(message)
        raise typer.Exit(code)

    def summary(self, summary) -> None:
        fields = {} if not self.json else {
            "rows": summary.rows, "scored": summary.scored, "empty": summary.empty, "truncated": summary.truncated,
            "elapsed_seconds": round(summary.elapsed, 3), "label_counts": summary.label_counts,
            "output": str(summary.output),
        }  # fmt: skip
        self._emit("summary", summary.line(), **fields)


class _StopOnSignal:
    """First SIGINT/SIGTERM: stop at the next batch boundary; a second one quits at once."""

    def __init__(self, report: _Reporter) -> None:
        self.report = report
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        self.report.note(f"{signal.Signals(signum).name}: stopping after the current batch (Ctrl-C again quits now)")

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def main() -> None:
    """Console-script entry point."""
    app()
