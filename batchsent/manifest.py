"""The run manifest: one JSON file saying what a run read, used, did and how it ended."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .config import JobConfig
from .io import atomic_file

LIBRARIES = ("batchsent", "transformers", "torch", "tokenizers", "pyarrow", "numpy", "onnxruntime")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


def build_manifest(
    config: JobConfig, record: dict[str, Any], started_at: float, ended_at: float, exit_code: int, error: str | None
) -> dict[str, Any]:
    """The manifest of one run, from its options and what the job recorded (possibly partial)."""
    state = record.get("state")
    counts = {"rows_total": None, "scored": None, "empty": None, "truncated": None, "label_counts": {}}
    if state is not None:
        counts = {
            "rows_total": state.rows,
            "scored": state.rows - state.empty,
            "empty": state.empty,
            "truncated": state.truncated,
            "label_counts": dict(state.label_counts),
        }
    elapsed = ended_at - started_at
    stat = config.input.stat() if config.input.exists() else None
    model = record.get("model") or {}
    options = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(config).items()}
    return {
        "input": {
            "path": str(config.input.resolve()),
            "size": stat.st_size if stat else None,
            "mtime": _iso(stat.st_mtime) if stat else None,
        },
        "output": str(config.output_path.resolve()),
        **counts,
        "rows_resumed_from": record.get("resumed_from_rows", 0),
        "model": {
            "id": config.model,
            "local_path": model.get("path"),
            "revision": model.get("revision"),
            "labels": dict(enumerate(record.get("labels") or [])),
        },
        "options": options,
        "versions": {name: _version(name) for name in LIBRARIES} | {"python": platform.python_version()},
        "device": record.get("device"),
        "dtype": record.get("dtype"),
        "variant": record.get("variant"),
        "started": _iso(started_at),
        "ended": _iso(ended_at),
        "elapsed_seconds": round(elapsed, 3),
        "rows_per_second": (
            round((counts["rows_total"] - record.get("resumed_from_rows", 0)) / elapsed, 2)
            if counts["rows_total"] and elapsed > 0 else None
        ),  # rows this run scored
        "exit_status": exit_code,
        "error": error,
    }


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as JSON atomically: readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
