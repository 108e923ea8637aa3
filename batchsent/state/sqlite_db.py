"""How every local SQLite store of batchsent is opened (the prediction cache, the file-digest memo, the
tuning store): autocommit, so each store writes its transactions explicitly, and a busy timeout, so two
runs on one machine wait for each other's short transactions instead of failing."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(
    path: Path, busy_seconds: float = 30.0, *, wal: bool = False, any_thread: bool = False
) -> sqlite3.Connection:
    """A connection to the store at ``path``; ``wal`` turns on write-ahead logging (readers never wait for a
    writer); ``any_thread`` lets the connection be used from a thread other than the one that opened it."""
    connection = sqlite3.connect(
        str(path), timeout=busy_seconds, isolation_level=None, check_same_thread=not any_thread
    )
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_seconds * 1000)}")
        if wal:
            connection.execute("PRAGMA journal_mode = WAL")
    except sqlite3.Error:
        connection.close()
        raise
    return connection
