"""Progress renderers for the CLI: a tqdm bar on a terminal, plain lines in logs.

Parquet reports rows done of the total in its metadata; CSV and TSV report bytes read
of the file size (their row count is unknown until the end), with rows/s beside it.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_SECONDS = 10.0


class BarProgress:
    """A tqdm bar on stderr."""

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

    def advance(self, rows_done: int, bytes_done: int) -> None:
        if self._bar is None:
            return
        self._bar.update((rows_done if self._by_rows else bytes_done) - self._bar.n)
        if not self._by_rows:
            elapsed = max(time.monotonic() - self._started, 1e-9)
            self._bar.set_postfix_str(f"{rows_done:,} rows, {rows_done / elapsed:,.0f} rows/s", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class LogProgress:
    """One plain, timestamped line every ``interval`` seconds (for cron and CI logs)."""

    def __init__(self, stream: TextIO | None = None, interval: float | None = None, json_lines: bool = False) -> None:
        self._stream = stream or sys.stderr
        self._json = json_lines
        self._interval = LOG_INTERVAL_SECONDS if interval is None else interval
        self._total_rows: int | None = None
        self._total_bytes = 0
        self._started = self._last = 0.0

    def start(self, total_rows: int | None, total_bytes: int) -> None:
        self._total_rows, self._total_bytes = total_rows, total_bytes
        self._started = self._last = time.monotonic()

    def advance(self, rows_done: int, bytes_done: int) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        if self._total_rows:
            share = rows_done / self._total_rows
        else:
            share = bytes_done / self._total_bytes if self._total_bytes else 1.0
        rate = rows_done / max(now - self._started, 1e-9)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self._json:
            fields = {"time": stamp, "level": "progress", "rows": rows_done, "share": round(share, 4), "rows_per_second": round(rate, 1)}
            print(json.dumps(fields), file=self._stream, flush=True)
        else:
            print(f"{stamp} progress: {rows_done:,} rows ({share:.0%}), {rate:,.0f} rows/s", file=self._stream, flush=True)

    def close(self) -> None:
        pass
