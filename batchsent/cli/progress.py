"""What the CLI prints on stderr: progress (a tqdm bar on a terminal, plain or JSON lines in
logs), notes, errors and the summary.

The job reports after every model batch: rows done (committed rows plus the finished
share of the chunk in the model) and bytes read. Parquet knows its row count, so its bar
and ETA count rows; CSV and TSV do not until the end, so their bar counts bytes of the
file, with rows and rows/s beside it. ``note`` carries one-off events (model loaded,
signal received) in the same stream.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO, cast

import typer
from tqdm import tqdm

from batchsent.data.storage import redact, redacted
from batchsent.errors import first_line

LOG_INTERVAL_SECONDS = 10.0


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class BarProgress:
    """A tqdm bar on stderr: rows (Parquet) or bytes with rows beside them (CSV/TSV)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._bar: tqdm | None = None
        self._by_rows = True
        self._started = 0.0

    def start(self, total_rows: int | None, total_bytes: int) -> None:
        self._by_rows = total_rows is not None
        self._started = time.monotonic()
        if self._by_rows:
            self._bar = tqdm(total=total_rows, unit=" rows", file=self._stream, dynamic_ncols=True)
        else:
            self._bar = tqdm(
                total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, file=self._stream, dynamic_ncols=True
            )

    def loaded(self, seconds: float, where: str) -> None:
        self.note(f"model loaded in {seconds:.1f} s ({where})")

    def advance(self, rows_done: int, bytes_done: int) -> None:
        if self._bar is None:
            return
        self._bar.update((rows_done if self._by_rows else bytes_done) - self._bar.n)
        if not self._by_rows:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            self._bar.set_postfix_str(f"{rows_done:,} rows, {rows_done / elapsed:,.0f} rows/s", refresh=True)

    def note(self, message: str) -> None:
        tqdm.write(f"note: {redact(message)}", file=self._stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class LogProgress:
    """Timestamped lines for cron and CI logs: the first rows at once, then one line every ``interval`` seconds."""

    def __init__(self, stream: TextIO | None = None, interval: float | None = None, json_lines: bool = False) -> None:
        self._stream = stream or sys.stderr
        self._json = json_lines
        self._interval = LOG_INTERVAL_SECONDS if interval is None else interval
        self._total_rows: int | None = None
        self._total_bytes = 0
        self._started = self._last = 0.0
        self._logged_rows = 0

    def loaded(self, seconds: float, where: str) -> None:
        self.note(f"model loaded in {seconds:.1f} s ({where})")

    def start(self, total_rows: int | None, total_bytes: int) -> None:
        self._total_rows, self._total_bytes = total_rows, total_bytes
        self._started = self._last = time.monotonic()

    def advance(self, rows_done: int, bytes_done: int) -> None:
        now = time.monotonic()
        first_rows = self._logged_rows == 0 and rows_done > 0
        if rows_done == self._logged_rows or (now - self._last < self._interval and not first_rows):
            return
        self._last, self._logged_rows = now, rows_done
        if self._total_rows:
            share = rows_done / self._total_rows
        else:
            share = bytes_done / self._total_bytes if self._total_bytes else 1.0
        elapsed = max(now - self._started, 1e-9)
        rate = rows_done / elapsed
        eta = elapsed * (1 - share) / share if share > 0 else None
        if self._json:
            fields = {
                "time": _stamp(),
                "level": "progress",
                "rows": rows_done,
                "share": round(share, 4),
                "rows_per_second": round(rate, 1),
                "eta_seconds": None if eta is None else round(eta),
            }
            print(json.dumps(fields), file=self._stream, flush=True)
        else:
            left = f", about {eta:,.0f} s left" if eta is not None else ""
            print(
                f"{_stamp()} progress: {rows_done:,} rows ({share:.0%}), {rate:,.0f} rows/s{left}",
                file=self._stream,
                flush=True,
            )

    def note(self, message: str) -> None:
        message = redact(message)
        if self._json:
            print(json.dumps({"time": _stamp(), "level": "note", "message": message}), file=self._stream, flush=True)
        else:
            print(f"{_stamp()} note: {message}", file=self._stream, flush=True)

    def close(self) -> None:
        pass


class NotesOnly:
    """--quiet: no progress and no load time, but notes (a signal was received) still reach the log."""

    def __init__(self, json_lines: bool = False, stream: TextIO | None = None) -> None:
        self._log = LogProgress(stream, json_lines=json_lines)

    def loaded(self, seconds: float, where: str) -> None:
        pass

    def start(self, total_rows: int | None, total_bytes: int) -> None:
        pass

    def advance(self, rows_done: int, bytes_done: int) -> None:
        pass

    def note(self, message: str) -> None:
        self._log.note(message)

    def close(self) -> None:
        pass


def progress_for(quiet: bool, log_format: str) -> BarProgress | LogProgress | NotesOnly:
    """A bar on a terminal, lines in a log (text or JSON), notes only with --quiet."""
    if quiet:
        return NotesOnly(json_lines=log_format == "json")
    if sys.stderr.isatty() and log_format == "text":
        return BarProgress()
    return LogProgress(json_lines=log_format == "json")


class Reporter:
    """Errors, notes and the summary on stderr: plain lines, or JSON objects with --log-format json."""

    def __init__(self, log_format: str) -> None:
        self.json = log_format == "json"

    def _emit(self, level: str, message: str, **fields: Any) -> None:
        message, fields = redact(message), cast(dict[str, Any], redacted(fields))
        if self.json:
            typer.echo(json.dumps({"time": _stamp(), "level": level, "message": message, **fields}), err=True)
        else:
            typer.echo(f"{level if level != 'summary' else 'done'}: {message}", err=True)

    def note(self, message: str) -> None:
        self._emit("note", message)

    def fail(self, message: str, code: int) -> None:
        """Print ``error: <first line>`` and exit with ``code``."""
        self._emit("error", first_line(message))
        raise typer.Exit(int(code))

    def summary(self, summary: Any) -> None:
        fields = (
            {}
            if not self.json
            else {
                "rows": summary.rows,
                "scored": summary.scored,
                "empty": summary.empty,
                "truncated": summary.truncated,
                "elapsed_seconds": round(summary.elapsed, 3),
                "load_seconds": round(summary.load_seconds, 3),
                "rows_per_second": round(summary.rows_per_second, 1),
                "label_counts": summary.label_counts,
                "output": str(summary.output),
                "where": summary.where,
                "from_cache": summary.cached,
                "duplicates": summary.duplicates,
            }
            | ({"models": [dataclasses.asdict(model) for model in summary.models]} if summary.models else {})
        )
        self._emit("summary", summary.line(), **fields)
