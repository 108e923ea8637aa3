"""What a run records as it goes, typed once: every engine fills one ``RunRecord`` and the manifest and the
failure messages are made from it, so a key one engine forgets or misspells is a type error, not a
manifest field that is silently empty."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from batchsent.state.checkpoint import CommittedState


class RunRecord(TypedDict, total=False):
    """Filled as the run goes (a failed run's manifest shows how far it got). Who fills each key:"""

    output: Path | str  # every engine: the output location (an object URL as given)
    load_seconds: float  # every engine: the models' load (Ray: the slowest actor's)
    resumed_from_rows: int  # every engine: rows an interrupted run had committed
    models: list[dict[str, Any]]  # every engine: per model its identity, labels in id2label order, device, dtype...
    model: dict[str, Any]  # single-model runs: models[0]'s identity, and the four keys below (lift_single_model)
    labels: list[str]
    device: str
    dtype: str
    variant: str
    precision_basis: dict[str, Any] | None  # --precision fast on CPU: the tuning it followed (local engine)
    state: CommittedState  # local engine: the counts committed so far
    files: int  # folder runs: how many files
    current: RunRecord  # local folder runs: the record of the file being scored
    ray_progress: str  # Ray: where its progress is kept
    fingerprint_models: list[dict[str, Any]]  # Ray: each model as its resume key holds it


def lift_single_model(record: RunRecord, entry: dict[str, Any]) -> None:
    """A single-model run's facts at the top of the record, where the manifest reads them."""
    record["model"] = entry["model"]
    record["labels"] = entry["labels"]
    record["device"] = entry["device"]
    record["dtype"] = entry["dtype"]
    record["variant"] = entry["variant"]
    if "precision_basis" in entry:
        record["precision_basis"] = entry["precision_basis"]


def copy_model_facts(source: RunRecord, target: RunRecord) -> None:
    """The model facts one file of a folder run recorded, into the whole run's record."""
    if "models" in source:
        target["models"] = source["models"]
    if "model" in source:
        lift_single_model(
            target,
            {
                "model": source["model"],
                "labels": source.get("labels"),
                "device": source.get("device"),
                "dtype": source.get("dtype"),
                "variant": source.get("variant"),
            },
        )
