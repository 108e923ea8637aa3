"""The ``batchsent`` command: flags -> JobConfig -> job.run, errors -> one line + exit code."""

from __future__ import annotations

import os
import sys
import traceback as tb
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .config import DEFAULT_CHUNK_ROWS, DEFAULT_MODEL, build_config
from .device import CPU_LIMITS, CUDA_LIMITS
from .errors import BatchsentError
from .job import run
from .progress import BarProgress, LogProgress

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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
        Optional[str], typer.Option(help="int8: dynamic int8 quantization of the Linear layers (CPU). [default: off]")
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
    traceback: Annotated[bool, typer.Option("--traceback", help="Show the full traceback of an unexpected error.")] = False,
) -> None:
    """Score the text column of INPUT and write it back with prediction columns."""
    _quiet_libraries()
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
        "prefix": prefix,
        "all_scores": all_scores,
        "chunk_rows": chunk_rows,
        "long_text": long_text,
        "stride": stride,
        "aggregate": aggregate,
        "overwrite": overwrite,
        "quiet": quiet,
    }
    try:
        job = build_config(flags, config)
        progress = None if job.quiet else (BarProgress() if sys.stderr.isatty() else LogProgress())
        summary = run(job, progress=progress)
    except BatchsentError as error:
        _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; no output was written", EXIT_INTERRUPTED)
    except Exception as error:  # noqa: BLE001 - the one place unexpected errors become exit 1
        if traceback:
            tb.print_exc()
        _fail(f"{type(error).__name__}: {error} (rerun with --traceback for details)", EXIT_FAILED)
    typer.echo(f"done: {summary.line()}", err=True)


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message.strip().splitlines()[0] if message.strip() else message}", err=True)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    app()
