"""The ``batchsent`` command, a face only: flags -> JobConfig -> runner.run, progress drawn, errors -> one line + exit code."""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import sys
import threading
import traceback as tb
from pathlib import Path
from typing import Annotated

import typer

from batchsent import __version__
from batchsent.cli.progress import Reporter, progress_for
from batchsent.engine.runner import run
from batchsent.errors import BatchsentError, ExitCode, PublishedWithErrors, UsageError, first_line
from batchsent.runtime.device import CPU_AMX_BF16_LIMITS, CPU_LIMITS, CUDA_LIMITS
from batchsent.runtime.tune_sample import SAMPLE_ROWS
from batchsent.settings.jobfile import build_config
from batchsent.settings.options import (
    DEFAULT_AGGREGATION,
    DEFAULT_CHUNK_ROWS,
    DEFAULT_MODEL,
    DEFAULT_STRIDE,
    MAX_CHUNK_ROWS,
    REPORT_EXAMPLES,
    REPORT_LOW_CONFIDENCE,
    JobConfig,
)

JOB_FIELDS = set(JobConfig.__dataclass_fields__)
MAX_TIME_CAP_SECONDS = 86_400  # a tune is a measurement, not a job: a day is past any sensible cap


def _default(option: str) -> str:
    """``[default: X]`` for a help text, read from JobConfig, which owns every default: each is stated once."""
    value = next(field.default for field in dataclasses.fields(JobConfig) if field.name == option)
    return f"[default: {value}]"


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
        str | None,
        typer.Argument(
            help="CSV, TSV, JSON Lines or Parquet file (may be .gz, .bz2, .zst), a folder or glob of them, "
            "or s3://, gs://, az:// URLs of the same (or input = ... in --config).",
            show_default=False,
        ),
    ] = None,
    column: Annotated[
        str | None, typer.Option("-c", "--column", help=f"Text column to score. {_default('column')}")
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            help="Output file (its suffix picks the format) or, for a folder or glob, folder; "
            "local or s3://, gs://, az://. [default: INPUT_STEM.scored.SUFFIX, or INPUT_FOLDER.scored]",
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            metavar="<str>",
            help="Hub id or local model directory; or NAME=MODEL, repeated, to score with several models in "
            "one pass (NAME_label, NAME_score... per model). "
            f"[default: $BATCHSENT_MODEL or {DEFAULT_MODEL}]",
        ),
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="Hub branch, tag or commit to pin the model to. [default: main]")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Most rows in one model batch (bounded by the device's memory). "
            f"[default: {CPU_LIMITS.rows} on CPU, {CUDA_LIMITS.rows} on CUDA]"
        ),
    ] = None,
    token_budget: Annotated[
        int | None,
        typer.Option(
            help="Most padded tokens (rows x longest row) in one batch (bounded by the device's memory). "
            f"[default: {CPU_LIMITS.tokens} on CPU ({CPU_AMX_BF16_LIMITS.tokens} at bfloat16 with AMX), "
            f"{CUDA_LIMITS.tokens} on CUDA]"
        ),
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Truncate texts to this many tokens. [default: the model's limit]")
    ] = None,
    device: Annotated[str | None, typer.Option(help=f"auto, cpu, cuda, cuda:N or mps. {_default('device')}")] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="auto, float32, float16 or bfloat16. [default: auto = float16 on CUDA, float32 elsewhere]"),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help=f"torch, or onnx (ONNX Runtime; pip install 'batchsent[onnx]'). {_default('backend')}"),
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="int8: the encoder's Linear layers as int8 products, per-token activation scales (CPU). [default: off]"
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="exact (float32), or fast: on CPU the variant `batchsent tune` measured fastest for this model on "
            "this machine with 99.5%+ of float32's labels (batchsent info shows it), float16 on CUDA. "
            "[default: --dtype and --quantize as given]"
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="Torch intra-op threads, at most the CPUs this process may use. [default: torch's own choice]"
        ),
    ] = None,
    prefix: Annotated[str | None, typer.Option(help=f"Prefix of the prediction columns. {_default('prefix')}")] = None,
    pair_column: Annotated[
        str | None,
        typer.Option(
            help="Second text column: each row is scored as (text, text_pair), for cross-encoders and NLI models."
        ),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(
            help='Zero-shot: candidate labels, e.g. "billing,shipping,refund", scored with an '
            "NLI model (its config names an entailment label)."
        ),
    ] = None,
    hypothesis_template: Annotated[
        str | None,
        typer.Option(help=f"Zero-shot: the hypothesis, {{}} is the label. {_default('hypothesis_template')}"),
    ] = None,
    multi_label: Annotated[
        bool | None,
        typer.Option(
            "--multi-label/--single-label",
            help="Zero-shot: score each label on its own "
            "(entailment vs contradiction) instead of one softmax across them.",
            show_default=False,
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool | None,
        typer.Option(
            "--trust-remote-code/--no-trust-remote-code",
            help="Run the code a model folder or Hub repo brings (its config's auto_map). "
            "Off: such a model is refused.",
            show_default=False,
        ),
    ] = None,
    all_scores: Annotated[
        bool | None,
        typer.Option(
            "--all-scores/--no-all-scores", help="Add one PREFIXscore_LABEL column per label.", show_default=False
        ),
    ] = None,
    long_text: Annotated[
        str | None,
        typer.Option(
            help="truncate: score the first --max-length tokens; chunk: score every token in windows. "
            + _default("long_text")
        ),
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option(help=f"With --long-text chunk: tokens shared by consecutive windows. [default: {DEFAULT_STRIDE}]"),
    ] = None,
    aggregate: Annotated[
        str | None,
        typer.Option(
            help=f"With --long-text chunk: mean, max (most confident window) or first. [default: {DEFAULT_AGGREGATION}]"
        ),
    ] = None,
    chunk_rows: Annotated[
        int | None,
        typer.Option(
            help=f"Rows read, sorted and written together (at most {MAX_CHUNK_ROWS:,}). [default: {DEFAULT_CHUNK_ROWS}]"
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML job file; flags override its values.")] = None,
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite/--no-overwrite", help="Replace an existing output.", show_default=False)
    ] = None,
    quiet: Annotated[
        bool | None,
        typer.Option(
            "--quiet/--no-quiet", "-q", help="No progress; notes, errors and the summary only.", show_default=False
        ),
    ] = None,
    report: Annotated[
        str | None,
        typer.Option(metavar="<path>", help="Also write an HTML report of the output here at the end (both engines)."),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="local, or ray (Ray Data; INPUT may be a file, folder or glob; pip install 'batchsent[ray]'). "
            + _default("engine")
        ),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="With --engine ray: the cluster to join. [default: a local Ray for this job]")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help=f"With --engine ray: scoring actors (each loads the model once). {_default('workers')}"),
    ] = None,
    gpus_per_worker: Annotated[
        float | None,
        typer.Option(help=f"With --engine ray: GPUs per actor (fractions allowed). {_default('gpus_per_worker')}"),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its last committed chunk.")
    ] = False,
    manifest: Annotated[
        str | None,
        typer.Option(
            metavar="<path>", help="Write a JSON manifest of the run here (also when it fails; both engines)."
        ),
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option(
            help="Prediction cache (created if missing): texts scored by an earlier run with "
            "the same model and options are not scored again. A SQLite file; with --engine "
            "ray a folder or s3://, gs://, az:// prefix that every node reaches."
        ),
    ] = None,
    log_format: Annotated[
        str, typer.Option(help="text, or json (one JSON object per line) for progress, errors and the summary.")
    ] = "text",
    traceback: Annotated[
        bool, typer.Option("--traceback", help="Show the full traceback of an unexpected error.")
    ] = False,
) -> None:
    """Score the text column of INPUT and write it back with prediction columns."""
    flags = {name: value for name, value in locals().items() if name in JOB_FIELDS}
    flags["resume"] = resume or None
    _quiet_libraries()
    if log_format not in ("text", "json"):
        Reporter("text").fail(f"--log-format {log_format!r}: expected text or json", ExitCode.USAGE)
    reporter = Reporter(log_format)
    try:
        job = build_config(flags, config)
        summary = run(job, progress=progress_for(job.quiet, log_format), handle_signals=True)
    except PublishedWithErrors as error:
        reporter.summary(error.summary)
        reporter.fail(str(error), error.exit_code)
    except BatchsentError as error:
        reporter.fail(_explained(error, traceback), error.exit_code)
    reporter.summary(summary)
    if job.report is not None:
        reporter.note(f"report written to {job.report}")


def _explained(error: BatchsentError, show_traceback: bool) -> str:
    """The error's line; for a failure batchsent did not foresee, its traceback (--traceback) or the hint to see it."""
    cause: BaseException = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, (BatchsentError, KeyboardInterrupt)) or error.exit_code != ExitCode.FAILED:
        return str(error)
    if show_traceback:
        tb.print_exception(cause)
        return str(error)
    return f"{error} (--traceback shows details)"


@app.command("report")
def report_command(
    scored_file: Annotated[
        Path, typer.Argument(help="A file (or Ray output folder) written by batchsent score.", show_default=False)
    ],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="HTML file. [default: SCORED_FILE_STEM.report.html]")
    ] = None,
    by: Annotated[str | None, typer.Option(help="Column to break label shares down by (product, region...).")] = None,
    gold: Annotated[str | None, typer.Option(help="Column of human labels: accuracy, precision, recall, F1.")] = None,
    text: Annotated[str | None, typer.Option(help="Text column shown in examples. [default: text, if present]")] = None,
    prefix: Annotated[
        list[str] | None,
        typer.Option(
            metavar="<str>",
            help="Prefix of the prediction columns; repeated (NAME_ of each model of a "
            "multi-model run) for each model's sections and how often they agree. " + _default("prefix"),
        ),
    ] = None,
    examples: Annotated[int, typer.Option(help="Example rows per table.")] = REPORT_EXAMPLES,
    low_confidence: Annotated[
        float, typer.Option(help="Scores below this count as low confidence.")
    ] = REPORT_LOW_CONFIDENCE,
) -> None:
    """Write a self-contained HTML report of a scored file: labels, scores, breakdowns, examples."""
    from batchsent.report.page import build_report
    from batchsent.report.stats import ReportOptions
    from batchsent.settings.options import check_report_target

    reporter = Reporter("text")
    target = output or scored_file.with_name(f"{scored_file.name.split('.')[0]}.report.html")
    try:
        check_report_target(target)
        build_report(
            scored_file,
            target,
            ReportOptions(
                by=by,
                gold=gold,
                text=text,
                examples=examples,
                low_confidence=low_confidence,
                prefixes=tuple(prefix or ()),
            ),
        )
    except BatchsentError as error:
        reporter.fail(str(error), error.exit_code)
    reporter.note(f"report written to {target}")


@app.command("tune")
def tune_command(
    model: Annotated[str, typer.Option(help="Hugging Face model id or local directory.")] = DEFAULT_MODEL,
    sample: Annotated[
        str | None,
        typer.Option(
            help=f"File of your own texts to measure on (CSV, TSV, JSON Lines, Parquet; at least "
            f"500 non-blank rows). [default: a built-in mix of {SAMPLE_ROWS} short and long reviews]"
        ),
    ] = None,
    column: Annotated[str, typer.Option(help="Text column of --sample.")] = "text",
    max_length: Annotated[
        int | None, typer.Option(help="Truncate at this many tokens. [default: the model's limit]")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads, as the runs it is for will use. [default: torch's]")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Model revision (Hub branch, tag or commit).")] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Run code the model folder brings (its config's auto_map).")
    ] = False,
    time_cap: Annotated[
        float,
        typer.Option(
            help="Stop measuring after this many seconds (at most 86,400); variants not fully measured are not chosen."
        ),
    ] = 600.0,
) -> None:
    """Time every variant this machine can run on a model and store the fastest that keeps 99.5% of
    float32's labels: what --precision fast then runs here, for this model."""
    from batchsent.model.classifier import Classifier
    from batchsent.runtime.tuning import run_tuning, sample_texts, threads_text
    from batchsent.settings.options import ModelOptions

    _quiet_libraries()
    reporter = Reporter("text")
    try:
        if not 0 < time_cap <= MAX_TIME_CAP_SECONDS:  # nan compares false: refused too
            raise UsageError(
                f"--time-cap must be more than 0 and at most {MAX_TIME_CAP_SECONDS:,} seconds, got {time_cap:g}"
            )
        options = ModelOptions(
            model=model,
            max_length=max_length,
            threads=threads,
            revision=revision,
            trust_remote_code=trust_remote_code,
            device="cpu",
        )
        texts, described = sample_texts(sample, column)
        tuning = run_tuning(options, texts, described, time_cap, Classifier, reporter.note)
    except BatchsentError as error:
        reporter.fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        reporter.fail("interrupted: nothing was stored", ExitCode.INTERRUPTED)
    except Exception as error:
        reporter.fail(f"tuning failed: {first_line(error)}", ExitCode.FAILED)
    typer.echo(
        f"{model}: --precision fast runs {tuning.chosen.variant} here "
        f"({tuning.scope['cpu']}, {threads_text(tuning.scope)}, max length {tuning.scope['max_length']})"
    )
    typer.echo("\n".join(tuning.table()))
    load = "unknown" if tuning.load_average is None else f"{tuning.load_average:g}"
    typer.echo(f"load average {load} when the tuning began; each variant's rows/s is the median of its rounds")
    if tuning.too_noisy:
        reporter.note(
            f"{', '.join(tuning.too_noisy)} measured faster than float32 but not in every round: the "
            "machine was too noisy to tell; run batchsent tune again when it is quiet"
        )


@app.command("info")
def info_command(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of lines.")] = False,
) -> None:
    """Print this machine's CPU and its features, the torch and ONNX Runtime builds, CUDA devices,
    which variants can run here, and what --precision fast picks."""
    from batchsent.runtime.info import collect, render

    info = collect()
    typer.echo(json.dumps(info, indent=2) if as_json else "\n".join(render(info)))


from batchsent.cli.cache import cache_app  # noqa: E402 - the `batchsent cache` commands, registered on this app

app.add_typer(cache_app, name="cache")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as finished:
        _exit_without_teardown(finished.code)
        raise


def _exit_without_teardown(code: object) -> None:
    """End the process as soon as the command is done, without Python's interpreter teardown.

    By then every output is published and closed, and the atexit handlers still run (Ray's shutdown,
    temporary folders, logging). What is skipped is freeing torch's and transformers' modules object by
    object, about 1.2 s of every run on a 2-core EPYC (``make bench-startup``). A thread still at work
    is waited for as usual: then this returns and the process exits the ordinary way.
    """
    if threading.active_count() > 1:
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # SystemExit("message"): Python prints the message and exits 1
        print(code, file=sys.stderr)
        status = 1
    _flush_standard_streams()
    atexit._run_exitfuncs()
    _flush_standard_streams()  # what the atexit handlers printed
    os._exit(status)


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to say on it
            pass
