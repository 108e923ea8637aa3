"""Exceptions raised by the core; only the CLI turns them into exit codes."""

from __future__ import annotations


def first_line(message: object) -> str:
    """The first non-empty line of an error or message: what a one-line report shows."""
    lines = str(message).strip().splitlines()
    return lines[0] if lines else type(message).__name__ if isinstance(message, BaseException) else ""


class BatchsentError(Exception):
    """Base of every error batchsent reports to a user as one line."""

    exit_code = 1


class UsageError(BatchsentError):
    """An option value that cannot work (bad number, bad device, conflicting flags)."""

    exit_code = 2


class InputError(BatchsentError):
    """The input file is missing, unreadable, malformed or of an unsupported kind."""

    exit_code = 2


class ColumnNotFound(InputError):
    """The text column is not in the input."""


class OutputError(BatchsentError):
    """The output path cannot be used (exists, is the input, unsupported suffix)."""

    exit_code = 2


class ModelLoadError(BatchsentError):
    """The model or its tokenizer cannot be loaded from the Hub, the cache or a directory."""

    exit_code = 2


class ScoringError(BatchsentError):
    """Something failed while the job was running (write error, model failure)."""

    exit_code = 1


class Interrupted(BatchsentError):
    """The run was asked to stop (Ctrl-C, SIGTERM); committed progress is kept for --resume."""

    exit_code = 130
