"""Exit codes and the exceptions the core raises; only the CLI turns them into an exit status."""

from __future__ import annotations

import signal
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """How a run ended, as a process exit status (shared by the exceptions and the CLI)."""

    OK = 0
    FAILED = 1  # failed while running; committed progress is kept for --resume
    USAGE = 2  # bad option or bad input, found before scoring where possible
    INTERRUPTED = 130  # SIGINT (Ctrl-C)
    TERMINATED = 143  # SIGTERM


def first_line(message: object) -> str:
    """The first non-empty line of an error or message: what a one-line report shows."""
    lines = str(message).strip().splitlines()
    return lines[0] if lines else type(message).__name__ if isinstance(message, BaseException) else ""


class BatchsentError(Exception):
    """Base of every error batchsent reports to a user as one line."""

    exit_code: int = ExitCode.FAILED


class UsageError(BatchsentError):
    """An option value that cannot work (bad number, bad device, conflicting flags)."""

    exit_code = ExitCode.USAGE


class InputError(BatchsentError):
    """The input file is missing, unreadable, malformed or of an unsupported kind."""

    exit_code = ExitCode.USAGE


class ColumnNotFound(InputError):
    """The text column is not in the input."""


class OutputError(BatchsentError):
    """The output path cannot be used (exists, is the input, unsupported suffix, another run writes it)."""

    exit_code = ExitCode.USAGE


class ModelLoadError(BatchsentError):
    """The model or its tokenizer cannot be loaded from the Hub, the cache or a directory."""

    exit_code = ExitCode.USAGE


class ScoringError(BatchsentError):
    """Something failed while the job was running: the model raised, a write failed, the input went bad
    after rows were committed. Committed progress is kept for --resume."""

    exit_code = ExitCode.FAILED


class PublishedWithErrors(ScoringError):
    """The output is complete and published, but its manifest or report could not be written.

    ``summary`` is the finished run's RunSummary.
    """

    def __init__(self, message: str, summary: Any) -> None:
        super().__init__(message)
        self.summary = summary


class Interrupted(BatchsentError):
    """The run was asked to stop (a signal, or a stop callback); committed progress is kept for --resume.

    Exits 143 when the signal was SIGTERM, 130 otherwise.
    """

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return ExitCode.TERMINATED if self.signum == signal.SIGTERM else ExitCode.INTERRUPTED
