"""Each distinct text is scored once per model: across runs (``--cache``) and within a run.

A chunk is planned in the job's prefetch thread: its texts are hashed, looked up in the
store in a few queries, and only the texts neither stored nor already on their way
through the model go to tokenization. After the model ran, ``complete`` fills every
other row (a cache hit, or a copy of the row that scored the same text) and stores the
new texts, before the chunk is committed: a resumed run finds them again and writes the
same bytes. Without ``--cache`` the store is a private file in the run's progress folder.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from batchsent.cache.store import LAST_USE_REWRITE_SECONDS, Entry, ModelKey, PredictionCache, digest, digest_pair
from batchsent.model.encoding import is_blank
from batchsent.state.identity import package_version

if TYPE_CHECKING:
    from batchsent.model.classifier import Classifier, Scores

# digest -> (float32 probabilities as bytes, truncated, windows)
Values = tuple[bytes, bool, "int | None"]


@dataclass
class ChunkPlan:
    """What one chunk needs: which rows the model scores, and where every other row's values come from."""

    digests: list[bytes | None]  # per row; None for a blank text
    model_texts: list[str | None]  # the texts the model scores; None for every other row
    model_pairs: list[str | None] | None  # their pair texts (--pair-column), likewise
    to_score: dict[bytes, int]  # digest -> the row of this chunk the model scores it in
    known: dict[bytes, Entry]  # found in the store
    deferred: set[bytes] = field(default_factory=set)  # being scored by an earlier chunk of this run


@dataclass
class ReuseCounts:
    """Rows of a chunk that were not scored: found in the cache, or a repeat of a text this run scored."""

    cached: int = 0
    duplicates: int = 0


class RunReuse:
    """One run's view of a store for one model.

    ``plan`` runs in the prefetch thread and ``complete`` in the scoring thread, in chunk
    order; one lock serialises their use of the connection and of the in-flight set. The
    values of texts this run scored stay in memory only until no planned chunk can still
    ask for them (a few chunks), so memory does not grow with the file.
    """

    def __init__(self, store: PredictionCache, model: ModelKey, run_id: int, *, shared: bool = True) -> None:
        """``shared``: ``store`` is the user's --cache; False for a run's private store, where an entry of an
        earlier run is this run's own before it was interrupted (a repeated text, not one "from the cache")."""
        self.store, self.model, self.run_id, self.shared = store, model, run_id, shared
        self._lock = threading.Lock()
        self._in_flight: set[bytes] = set()
        self._recent: list[tuple[int, dict[bytes, Values]]] = []  # (plans made when stored, values)
        self._planned = 0
        self._completed = 0

    def plan(self, texts: list[str | None], pairs: list[str | None] | None, digests: list[bytes | None]) -> ChunkPlan:
        """Which rows of a chunk the model scores; ``digests`` are ``row_digests(texts, pairs)``
        (computed once per chunk, whatever the number of models)."""
        unique = list(dict.fromkeys(d for d in digests if d is not None))
        with self._lock:
            known = self.store.lookup(self.model, unique)
            deferred = {d for d in unique if d not in known and d in self._in_flight}
            new = [d for d in unique if d not in known and d not in deferred]
            self._in_flight.update(new)
            self._planned += 1
        to_score: dict[bytes, int] = {}
        wanted = set(new)
        model_texts: list[str | None] = [None] * len(texts)
        model_pairs: list[str | None] | None = None if pairs is None else [None] * len(texts)
        for row, key in enumerate(digests):
            if key in wanted and key not in to_score:
                to_score[key] = row
                model_texts[row] = texts[row]
                if model_pairs is not None:
                    model_pairs[row] = pairs[row]  # type: ignore[index]
        return ChunkPlan(digests, model_texts, model_pairs, to_score, known, deferred)

    def complete(self, plan: ChunkPlan, scores: Scores) -> tuple[Scores, ReuseCounts]:
        """``scores`` of the rows the model saw, with every other non-blank row filled; the new texts stored.

        A store that cannot be written raises ``sqlite3.Error`` (the caller reports it).
        """
        probabilities, truncated, windows = scores.probabilities, scores.truncated.copy(), scores.windows
        counts = ReuseCounts()
        earlier = self._earlier_values(plan.deferred)
        copy_to, copy_from, fill_rows, fill_values = [], [], [], []
        for row, key in enumerate(plan.digests):
            if key is None:
                continue
            source = plan.to_score.get(key)
            if source == row:
                continue
            if source is not None:
                copy_to.append(row)
                copy_from.append(source)
                counts.duplicates += 1
                continue
            entry = plan.known.get(key)
            values = (entry.probabilities, bool(entry.truncated), entry.windows) if entry is not None else earlier[key]
            if entry is not None and entry.run != self.run_id and self.shared:
                counts.cached += 1
            else:
                counts.duplicates += 1
            fill_rows.append(row)
            fill_values.append(values)
        if fill_rows:
            matrix = np.frombuffer(b"".join(v[0] for v in fill_values), dtype=np.float32).reshape(len(fill_rows), -1)
            probabilities[fill_rows] = matrix
            truncated[fill_rows] = [v[1] for v in fill_values]
            if windows is not None:
                windows[fill_rows] = [v[2] or 0 for v in fill_values]
        if copy_to:
            probabilities[copy_to] = probabilities[copy_from]
            truncated[copy_to] = truncated[copy_from]
            if windows is not None:
                windows[copy_to] = windows[copy_from]
        blank = np.fromiter((key is None for key in plan.digests), dtype=bool, count=len(plan.digests))
        self._store(plan, probabilities, truncated, windows)
        return type(scores)(probabilities, truncated, blank, windows), counts

    def _earlier_values(self, deferred: set[bytes]) -> dict[bytes, Values]:
        values: dict[bytes, Values] = {}
        if deferred:
            with self._lock:
                for _, stored in self._recent:
                    values.update((key, stored[key]) for key in deferred & stored.keys())
        return values

    def _store(
        self, plan: ChunkPlan, probabilities: np.ndarray, truncated: np.ndarray, windows: np.ndarray | None
    ) -> None:
        new: dict[bytes, Values] = {
            key: (probabilities[row].tobytes(), bool(truncated[row]), None if windows is None else int(windows[row]))
            for key, row in plan.to_score.items()
        }
        stale = int(time.time()) - LAST_USE_REWRITE_SECONDS
        used = [key for key, entry in plan.known.items() if entry.used < stale]
        with self._lock:
            self.store.store(self.model, self.run_id, ((k, *v) for k, v in new.items()), used)
            self._in_flight.difference_update(new)
            self._completed += 1
            self._recent.append((self._planned, new))
            self._recent = [(planned, stored) for planned, stored in self._recent if planned > self._completed]


def row_digests(texts: list[str | None], pairs: list[str | None] | None = None) -> list[bytes | None]:
    """Each row's store key: the digest of its text (or text and pair); None for a blank row."""
    if pairs is None:
        return [None if is_blank(text) else digest(text) for text in texts]  # type: ignore[arg-type]
    return [None if is_blank(t) or is_blank(p) else digest_pair(t, p) for t, p in zip(texts, pairs, strict=True)]  # type: ignore[arg-type]


def model_description(classifier: Classifier, identity: dict[str, Any], pairs: bool = False) -> dict[str, Any]:
    """Everything besides the text that moves a probability: the cache's model key.

    The weights and config (or Hub commit), where and how the model runs (device type,
    dtype, backend, int8 kernel), how texts become tokens (max length, long-text
    windows), the activation, and the library builds that compute them. Batch sizes and
    threads move a float32 result only in its last bits, within the tolerance a cached
    row is held to, so they are not part of the key.
    """
    chunked = classifier.long_text == "chunk"
    libraries = ["torch", "transformers", "tokenizers"] + (["onnxruntime"] if classifier.backend == "onnx" else [])
    return {
        "model": identity,
        "device_type": classifier.device.type,
        "dtype": classifier.dtype,
        "backend": classifier.backend,
        "quantize": classifier.quantize,
        "kernel": classifier.kernel,
        "max_length": classifier.max_length,
        "long_text": classifier.long_text,
        "stride": classifier.stride if chunked else None,
        "aggregate": classifier.aggregate if chunked else None,
        "activation": classifier.activation,
        "pairs": pairs,
        "zero_shot": None
        if not classifier.zero_shot
        else {
            "labels": classifier.labels,
            "template": classifier.options.hypothesis_template,
            "multi_label": classifier.options.multi_label,
            "entailment_id": classifier.entailment_id,
        },
        "libraries": {name: package_version(name) for name in libraries},
    }
