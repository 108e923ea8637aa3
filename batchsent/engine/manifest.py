"""The run manifest: one JSON file saying what a run read, used, did and how it ended."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchsent.data.storage import is_url, redacted
from batchsent.data.writers import atomic_file
from batchsent.engine.record import RunRecord
from batchsent.settings.options import JobConfig
from batchsent.state.identity import package_version

if TYPE_CHECKING:
    from batchsent.engine.summary import RunSummary

LIBRARIES = ("batchsent", "transformers", "torch", "tokenizers", "pyarrow", "numpy", "onnxruntime")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


def _counts(record: RunRecord, summary: RunSummary | None) -> dict[str, Any]:
    """Row counts from the finished run's summary, else from what a failed run committed."""
    if summary is not None:
        return {
            "rows_total": summary.rows,
            "scored": summary.scored,
            "empty": summary.empty,
            "truncated": summary.truncated,
            "label_counts": dict(summary.label_counts),
            "from_cache": summary.cached,
            "duplicates": summary.duplicates,
        }
    state = record.get("state")
    if state is None:
        return {
            "rows_total": None,
            "scored": None,
            "empty": None,
            "truncated": None,
            "label_counts": {},
            "from_cache": None,
            "duplicates": None,
        }
    return {
        "rows_total": state.rows,
        "scored": state.rows - state.empty,
        "empty": state.empty,
        "truncated": state.truncated,
        "label_counts": dict(state.label_counts),
        "from_cache": state.cached,
        "duplicates": state.duplicates,
    }


def _input(config: JobConfig) -> dict[str, Any]:
    if is_url(config.input):
        return {"path": str(config.input), "size": None, "mtime": None}
    source = Path(config.input)
    stat = source.stat() if source.is_file() else None
    return {
        "path": str(source.resolve()),
        "size": stat.st_size if stat else None,
        "mtime": _iso(stat.st_mtime) if stat else None,
    }


def _where(path: Path | str) -> str:
    return str(path) if is_url(path) else str(Path(path).resolve())


def _model_entry(model_id: str, fingerprint: dict[str, Any], labels: list[str] | None) -> dict[str, Any]:
    return {
        "id": model_id,
        "local_path": fingerprint.get("path"),
        "revision": fingerprint.get("revision"),
        "labels": dict(enumerate(labels or [])),
    }


def _model_entries(config: JobConfig, record: RunRecord, summary: RunSummary | None) -> list[dict[str, Any]]:
    """One entry per model: what it is, where it ran and (a multi-model run) what it predicted."""
    loaded = {entry["name"]: entry for entry in record.get("models") or []}
    state = record.get("state")
    predicted = {model.name: model for model in summary.models} if summary is not None else {}
    entries = []
    for scoring in config.scoring_models():
        entry = loaded.get(scoring.name, {})
        described = {
            "name": scoring.name,
            "prefix": scoring.prefix,
            **_model_entry(scoring.options.model, entry.get("model") or {}, entry.get("labels")),
            "device": entry.get("device"),
            "dtype": entry.get("dtype"),
            "variant": entry.get("variant"),
            "precision_basis": entry.get("precision_basis"),
        }
        if scoring.name is not None:
            if scoring.name in predicted:
                found = predicted[scoring.name]
                described.update(
                    label_counts=found.label_counts,
                    truncated=found.truncated,
                    from_cache=found.cached,
                    duplicates=found.duplicates,
                )
            elif state is not None and scoring.name in state.models:
                counts = state.models[scoring.name]
                described.update(
                    label_counts=counts["label_counts"],
                    truncated=counts["truncated"],
                    from_cache=counts["cached"],
                    duplicates=counts["duplicates"],
                )
        entries.append(described)
    return entries


def build_manifest(
    config: JobConfig,
    record: RunRecord,
    summary: RunSummary | None,
    started_at: float,
    ended_at: float,
    exit_code: int,
    error: str | None,
) -> dict[str, Any]:
    """The manifest of one run, from its options, its summary (None if it failed) and what it recorded."""
    counts = _counts(record, summary)
    elapsed = ended_at - started_at
    model = record.get("model") or {}
    resumed = record.get("resumed_from_rows", 0)
    load = record.get("load_seconds")
    scoring = elapsed - (load or 0.0)
    rows_this_run = (counts["rows_total"] or 0) - resumed
    return {
        "input": _input(config),
        "output": _where(summary.output if summary else record.get("output", config.output_path)),
        "engine": config.engine,
        **counts,
        "rows_resumed_from": resumed,
        "model": None if config.models else _model_entry(config.model, model, record.get("labels")),
        "models": _model_entries(config, record, summary),
        "options": config.described(),
        "versions": {name: package_version(name) for name in LIBRARIES} | {"python": platform.python_version()},
        "device": record.get("device"),
        "dtype": record.get("dtype"),
        "variant": record.get("variant"),
        "precision_basis": record.get("precision_basis"),  # --precision fast on CPU: the tuning it followed
        "started": _iso(started_at),
        "ended": _iso(ended_at),
        "elapsed_seconds": round(elapsed, 3),
        "load_seconds": None if load is None else round(load, 3),
        "rows_per_second": round(rows_this_run / scoring, 2) if rows_this_run > 0 and scoring > 0 else None,
        "exit_status": int(exit_code),
        "error": error,
    }


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as JSON atomically (readers never see half of it), credentials in URLs redacted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(redacted(json.loads(json.dumps(manifest, default=str))), indent=2)
    with atomic_file(path) as temporary:
        temporary.write_text(text + "\n", encoding="utf-8")
