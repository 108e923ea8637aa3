"""What a run's results depend on, written once: the key both engines' --resume (and a folder run's
per-file progress) compare before they continue an interrupted run.

A fingerprint has three parts:

- the inputs, by content (``identity.input_fingerprint``);
- the options that change what any row's result is (``RESULT_OPTIONS``), with the output format;
- each model, by content (a folder) or by Hub commit, with what it effectively ran: dtype, variant
  (``--precision fast``'s choice) and device type.

``REPLAY_OPTIONS`` change only the last bits of a row's float32 probabilities, through the rows that
share its batch. The local engine keys on them too: its resume replays the same chunks and batches,
so a resumed output is byte for byte an uninterrupted one. Ray's blocks are not replayed with a fixed
composition, so its resume leaves them out (its rows agree within the stated tolerance instead).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchsent.state.identity import hub_commit, model_identity

if TYPE_CHECKING:
    from batchsent.model.classifier import Classifier
    from batchsent.settings.options import JobConfig

RESULT_OPTIONS = (
    "column",
    "pair_column",
    "revision",
    "max_length",
    "prefix",
    "all_scores",
    "long_text",
    "stride",
    "aggregate",
    "backend",
    "quantize",
    "precision",
    "dtype",
    "labels",
    "hypothesis_template",
    "multi_label",
)
REPLAY_OPTIONS = ("batch_size", "token_budget", "threads", "chunk_rows", "device")
# Keyed through the model part instead: the model by content or commit, the int8 kernel by the variant it ran.
MODEL_OPTIONS = ("model", "models", "int8_kernel", "trust_remote_code")
# Where a run reads and writes, how it reports and which engine runs it: never what a row's result is.
RUN_OPTIONS = (
    "input",
    "output",
    "overwrite",
    "quiet",
    "resume",
    "engine",
    "ray_address",
    "workers",
    "gpus_per_worker",
    "manifest",
    "report",
    "cache",
)
EFFECTIVE_MODEL_FACTS = ("batch_size", "token_budget", "max_length", "dtype", "variant")


def options_key(config: JobConfig, output_format: str, *, replayed: bool) -> dict[str, Any]:
    """The options part: ``RESULT_OPTIONS`` (and ``REPLAY_OPTIONS`` when ``replayed``), the output format and
    each model spec of a multi-model run, as JSON values."""
    names = RESULT_OPTIONS + (REPLAY_OPTIONS if replayed else ())
    options: dict[str, Any] = {name: getattr(config, name) for name in names}
    options["output_format"] = output_format
    if config.models:
        options["models"] = [spec.described() for spec in config.models]
    return json.loads(json.dumps(options, default=str))


def loaded_model_key(identity: dict[str, Any], classifier: Classifier, *, replayed: bool) -> dict[str, Any]:
    """A loaded model's part: its identity and what it effectively runs (the batching facts when ``replayed``)."""
    facts = EFFECTIVE_MODEL_FACTS if replayed else ("max_length", "dtype", "variant")
    return {**identity, "device_type": classifier.device.type, **{name: getattr(classifier, name) for name in facts}}


def model_reference_key(model_ref: str, revision: str | None) -> dict[str, Any]:
    """A model not loaded here (Ray's actors load it): a local folder by the content of its files, a Hub id by
    the commit its revision points at in this machine's cache (the revision as typed where there is no copy).
    What the actors effectively ran is compared from their own records (``engine.ray.driver._record_actors``)."""
    if Path(model_ref).expanduser().is_dir():
        return model_identity(model_ref, None)
    return {"hub_id": model_ref, "revision": hub_commit(model_ref, revision) or revision}
