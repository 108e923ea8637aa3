"""The command line: flags, terminal output and exit codes (the only part that knows Typer)."""

from batchsent.cli.app import app, main

__all__ = ["app", "main"]
