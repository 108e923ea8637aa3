"""The two Ray stages that score a block: ``prepare_block`` (CPU tasks) and ``RayScorer`` (the model actors).

``prepare_block`` does everything but the model, ahead of the actors and on any CPU of the
cluster: the texts' digests and the shared cache's lookups (``--cache``), then the tokens of
the rows a model still has to score, as list columns (one list of sequences per row: one
sequence, a row's windows, or its zero-shot hypotheses). ``RayScorer`` turns those columns
back into the Classifier's ``EncodedChunk`` with array slicing, plans the length-sorted
batches, runs the model, fills the cache's hits and writes the prediction columns: a GPU
actor receives ready batches instead of waiting for a tokenizer.

Models that share a tokenizer (``encoding_key``) share one token column, as ``encode_each``
shares one tokenization in the local engine; a text repeated in an actor's batch is scored
once. The model key of the cache comes from the actors' own resources (``cache_keys``, run
once as a task with them), and each actor checks that it computes the same key.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import replace
from typing import Any, overload

import numpy as np
import pyarrow as pa

from batchsent.data import readers
from batchsent.engine.checks import check_model_columns
from batchsent.engine.ray import dataset as ray_dataset
from batchsent.errors import ModelLoadError, first_line
from batchsent.model.postprocess import column_names, prediction_arrays
from batchsent.settings.options import ScoringModel

TOKENS = "__batchsent_tokens_{}"  # per tokenizer group: list<list<int32>> (null: the row goes to no model)
TYPES = "__batchsent_types_{}"  # its token type ids, list<list<int8>>, for models that take them
OVER = "__batchsent_over_{}"  # the row is longer than the model's limit (truncated, or scored in windows)
TIMINGS_ENV = (
    "BATCHSENT_RAY_TIMINGS"  # a folder: each actor writes there how long it worked and waited (make bench-ray)
)


def node_name() -> str:
    import socket

    import ray

    try:
        address = str(ray.util.get_node_ip_address())
    except Exception:
        address = "address unknown"
    return f"{socket.gethostname()} ({address})"


def tokenizer_options(model: ScoringModel) -> ScoringModel:
    """The options of a tokenizer-only Classifier: tokens depend on the tokenizer, limits, windows and labels,
    never on where or how the model runs (so a CPU task tokenizes for a GPU actor, and nothing is tuned)."""
    options = replace(
        model.options,
        device="cpu",
        dtype="float32",
        precision=None,
        quantize=None,
        backend="torch",
        int8_kernel=None,
        threads=None,
    )
    return replace(model, options=options)


def encoding_groups(classifiers: list[Any]) -> list[int]:
    """The token column each model reads: models with an equal ``encoding_key`` share one."""
    keys: dict[tuple, int] = {}
    return [keys.setdefault(classifier.encoding_key, len(keys)) for classifier in classifiers]


_LOADED: dict[str, Any] = {}  # per Ray worker process: tokenizers and caches, loaded by its first task


def _loaded(kind: str, key: Any, load: Any) -> Any:
    """What ``load`` returns, once per worker process and ``key``; one of each kind is kept (the latest run's)."""
    name = f"{kind}:{json.dumps(key, sort_keys=True, default=str)}"
    if name not in _LOADED:
        for stale in [held for held in _LOADED if held.startswith(f"{kind}:")]:
            del _LOADED[stale]
        _LOADED[name] = load()
    return _LOADED[name]


@overload
def _column_texts(batch: pa.Table, column: str) -> list[str | None]: ...
@overload
def _column_texts(batch: pa.Table, column: None) -> None: ...
@overload
def _column_texts(batch: pa.Table, column: str | None) -> list[str | None] | None: ...
def _column_texts(batch: pa.Table, column: str | None) -> list[str | None] | None:
    """A block's texts in ``column`` (None for no column: a run without a pair column)."""
    if column is None:
        return None
    return readers.text_values(
        pa.concat_arrays(batch.column(column).chunks) if batch.num_rows else pa.array([], pa.string())
    )


def prepare_block(
    batch: pa.Table,
    models: list[ScoringModel],
    column: str,
    cache: str | None,
    keys: list[Any] | None,
    run: str | None = None,
    pair_column: str | None = None,
) -> pa.Table:
    """A block with its digests and cache hits (``--cache``) and the tokens of the rows the models score
    (each text with its pair from ``pair_column``, as the pipeline's ``text_pair``).

    The buckets of the cache a worker process has read stay in memory for the run ``run`` only."""
    from batchsent.cache.reuse import row_digests
    from batchsent.model.classifier import Classifier

    try:
        tokenizers = _loaded(
            "tokenizers",
            [repr(tokenizer_options(model).options) for model in models],
            lambda: [Classifier(tokenizer_options(model).options, weights=False) for model in models],
        )
    except Exception as error:
        raise ModelLoadError(f"Ray node {node_name()} cannot load the model: {first_line(error)}") from None
    texts, pairs = _column_texts(batch, column), _column_texts(batch, pair_column)
    needed: list[list[str | None]] = [list(texts) for _ in models]
    if cache is not None:
        from batchsent.cache.shared import SharedCache

        shared = _loaded("cache", [cache, run], lambda: SharedCache(cache, create=False))
        digests = row_digests(texts, pairs)
        batch = batch.append_column(ray_dataset.DIGEST, pa.array(digests, pa.binary(16)))
        for index, (key, tokenizer) in enumerate(zip(keys or [], tokenizers)):
            found = shared.lookup(key, digests, len(tokenizer.labels))
            needed[index] = [None if hit else text for text, hit in zip(texts, found.hit)]
            batch = _with_hits(batch, index, found)
    groups = encoding_groups(tokenizers)
    for group in range(max(groups) + 1):
        members = [index for index, owner in enumerate(groups) if owner == group]
        union = [
            next((needed[m][row] for m in members if needed[m][row] is not None), None) for row in range(len(texts))
        ]
        chunk = tokenizers[members[0]].tokenized(
            union, None if pairs is None else [pair if text is not None else None for text, pair in zip(union, pairs)]
        )
        ids, types = _token_columns(chunk, tokenizers[members[0]]._wants_type_ids)
        batch = batch.append_column(TOKENS.format(group), ids)
        if types is not None:
            batch = batch.append_column(TYPES.format(group), types)
        batch = batch.append_column(OVER.format(group), pa.array(np.asarray(chunk.truncated, dtype=bool)))
    return batch


def _with_hits(batch: pa.Table, index: int, found: Any) -> pa.Table:
    """A model's cache hits as columns: which rows, their probabilities (float32 bytes), truncated, windows, and
    the hits last used before the refresh limit (written again by this run)."""
    width = found.probabilities.shape[1]
    values = [row.tobytes() if hit else None for row, hit in zip(found.probabilities, found.hit)]
    batch = batch.append_column(ray_dataset.cache_column("hit", index), pa.array(found.hit))
    batch = batch.append_column(ray_dataset.cache_column("found", index), pa.array(values, pa.binary(4 * width)))
    batch = batch.append_column(ray_dataset.cache_column("found_truncated", index), pa.array(found.truncated))
    batch = batch.append_column(
        ray_dataset.cache_column("found_windows", index), pa.array(found.windows.astype(np.int32))
    )
    return batch.append_column(ray_dataset.cache_column("stale", index), pa.array(found.stale))


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices ``starts[i] .. starts[i] + lengths[i] - 1`` of every i, concatenated."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64), lengths) + within


def _token_columns(chunk: Any, with_types: bool) -> tuple[pa.Array, pa.Array | None]:
    """A tokenized chunk as one list of sequences per row (a repeated text gets its first row's sequences):
    list<list<int32>> ids and list<list<int8>> type ids, null for rows no model scores."""
    size = chunk.size
    if chunk.owners is not None:
        owner_rows = chunk.rows[chunk.owners]
    elif chunk.hypotheses:
        owner_rows = np.repeat(chunk.rows, chunk.hypotheses)
    else:
        owner_rows = chunk.rows
    source = np.arange(size)
    if chunk.copies is not None:
        source[chunk.copies[0]] = chunk.copies[1]
    order = np.argsort(owner_rows, kind="stable")  # sequences grouped by row, in their own order
    per_row = np.bincount(owner_rows, minlength=size).astype(np.int64)
    first = np.zeros(size, dtype=np.int64)
    np.cumsum(per_row[:-1], out=first[1:])
    counts = per_row[source]
    counts[chunk.blank] = 0
    sequences = order[_ranges(first[source], counts)]
    lengths = chunk.lengths[sequences]
    values = _ranges(chunk.offsets[sequences], lengths)
    inner_offsets = np.zeros(len(sequences) + 1, dtype=np.int32)
    np.cumsum(lengths, out=inner_offsets[1:])
    outer_offsets = np.zeros(size + 1, dtype=np.int32)
    np.cumsum(counts, out=outer_offsets[1:])
    mask = pa.array(np.asarray(chunk.blank, dtype=bool))

    def nested(flat: np.ndarray, kind: pa.DataType) -> pa.Array:
        inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat, kind))
        return pa.ListArray.from_arrays(pa.array(outer_offsets), inner, mask=mask)

    ids = nested(chunk.flat_ids[values].astype(np.int32), pa.int32())
    types = (
        nested(chunk.flat_type_ids[values].astype(np.int8), pa.int8())
        if with_types and chunk.flat_type_ids is not None
        else None
    )
    return ids, types


def encoded_chunk(batch: pa.Table, group: int, wanted: np.ndarray, texts: list, classifier: Any) -> Any:
    """The ``EncodedChunk`` of the rows ``wanted`` (a mask) from the block's token columns: each distinct text
    (or (text, pair)) once, its repeats as copies, without tokenizing anything."""
    from batchsent.model.encoding import EncodedChunk, first_occurrences

    outer = batch.column(TOKENS.format(group)).combine_chunks()
    wanted = wanted & outer.is_valid().to_numpy(zero_copy_only=False)
    rows, copies = first_occurrences(texts, np.flatnonzero(wanted))
    outer_offsets = outer.offsets.to_numpy().astype(np.int64)
    counts = outer_offsets[rows + 1] - outer_offsets[rows]
    sequences = _ranges(outer_offsets[rows], counts)
    inner = outer.values
    inner_offsets = inner.offsets.to_numpy().astype(np.int64)
    lengths = inner_offsets[sequences + 1] - inner_offsets[sequences]
    offsets = np.append(inner_offsets[sequences], 0)
    flat_ids = inner.values.to_numpy().astype(np.int64)
    flat_types = None
    if TYPES.format(group) in batch.column_names:
        flat_types = batch.column(TYPES.format(group)).combine_chunks().values.values.to_numpy().astype(np.int64)
    over = batch.column(OVER.format(group)).to_numpy() & wanted
    owners = (
        np.repeat(np.arange(len(rows)), counts)
        if classifier.long_text == "chunk" and not classifier.zero_shot
        else None
    )
    hypotheses = len(classifier.labels) if classifier.zero_shot else 0
    return EncodedChunk(
        len(texts), rows, lengths, offsets, flat_ids, flat_types, over, ~wanted, [], owners, copies, hypotheses
    )


def cache_keys(models: list[ScoringModel], cache: str, pairs: bool = False) -> list[Any]:
    """The model keys the actors compute (their device, dtype and variant): run as a task with their resources."""
    from batchsent.cache.reuse import model_description
    from batchsent.cache.shared import SharedCache
    from batchsent.model.classifier import Classifier

    shared = SharedCache(cache, create=False)
    keys = []
    for model in models:
        try:
            classifier = Classifier(model.options, weights=False)
        except Exception as error:
            raise ModelLoadError(f"Ray node {node_name()} cannot load the model: {first_line(error)}") from None
        description = model_description(classifier, classifier.identity, pairs)
        keys.append(shared.register(model.options.model, description, classifier.labels))
    return keys


def record_facts(location: str, classifiers: list[Any], load_seconds: float) -> None:
    """What this actor runs, as ``<location>/<node>-<pid>-<random>.json``: for each model its device, dtype and
    variant (the driver refuses an output that two variants scored, e.g. nodes whose --precision fast tunings
    differ, or a resume on another machine) and its labels in the model's order, with the load time."""
    from batchsent.data.storage import filesystem_of, write_bytes_atomically

    facts = {
        "node": node_name(),
        "pid": os.getpid(),
        "load_seconds": round(load_seconds, 3),
        "models": [
            {
                "device": classifier.device.type,
                "dtype": classifier.dtype,
                "variant": classifier.variant,
                "where": classifier.where,
                "labels": list(classifier.labels),
            }
            for classifier in classifiers
        ],
    }
    filesystem, root = filesystem_of(location)
    write_bytes_atomically(
        filesystem, root, f"{node_name()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json", json.dumps(facts).encode()
    )


def read_facts(location: str) -> list[dict[str, Any]]:
    """Every actor's facts recorded under ``location`` (this run's and, after --resume, the interrupted run's)."""
    from pyarrow import fs

    from batchsent.data.storage import filesystem_of

    filesystem, root = filesystem_of(location)
    found = []
    for info in filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True)):
        if info.type == fs.FileType.File and info.base_name.endswith(".json") and not info.base_name.startswith("."):
            with filesystem.open_input_stream(info.path) as stream:
                found.append(json.loads(stream.read()))
    return found


class RayScorer:
    """Map-batches callable: the local engine's Classifiers and columns, loaded once per actor.

    With several models each actor holds them all: a block is read once, tokenized once per
    shared tokenizer (by ``prepare_block``), scored by each model and written with every model's
    columns, and one flag column per model says which rows it truncated (for the counts). With
    a shared cache the weights load with the first row the cache does not hold.
    """

    def __init__(
        self,
        models: list[ScoringModel],
        column: str,
        all_scores: bool,
        cache: str | None = None,
        keys: list[Any] | None = None,
        pair_column: str | None = None,
        facts: str | None = None,
    ) -> None:
        from batchsent.model.classifier import Classifier

        started = time.monotonic()
        try:
            self.classifiers = [Classifier(model.options, weights=cache is None) for model in models]
        except Exception as error:
            raise ModelLoadError(f"Ray node {node_name()} cannot load the model: {first_line(error)}") from None
        if facts is not None:
            record_facts(facts, self.classifiers, time.monotonic() - started)
        self.column, self.pair_column, self.all_scores, self.keys = column, pair_column, all_scores, keys or []
        self.names = [
            column_names(classifier.labels, model.prefix, all_scores, classifier.long_text == "chunk")
            for model, classifier in zip(models, self.classifiers)
        ]
        check_model_columns(self.names, models)
        self.groups = encoding_groups(self.classifiers)
        if cache is not None:
            self._check_keys(models, cache)
        self._timings: dict[str, Any] = {"busy": 0.0, "waited": 0.0, "first_wait": None, "calls": 0, "rows": 0}
        self._idle_since = time.perf_counter()

    def _check_keys(self, models: list[ScoringModel], cache: str) -> None:
        """Entries found under the run's key are this actor's to use only if it computes that key too."""
        from batchsent.cache.reuse import model_description

        for model, classifier, key in zip(models, self.classifiers, self.keys):
            own = model_description(classifier, classifier.identity, self.pair_column is not None)
            if json.dumps(own, sort_keys=True, default=str) != key.description:
                raise ModelLoadError(
                    f"Ray node {node_name()} runs {model.options.model} as {classifier.where}, unlike "
                    "the node that made the run's cache key; give every node the same batchsent, "
                    "torch and transformers, or --precision exact"
                )

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        scored = self._score(batch)
        self._record(started, batch.num_rows)
        return scored

    def _record(self, started: float, rows: int) -> None:
        """With $BATCHSENT_RAY_TIMINGS: this actor's time scoring and time waiting for its next block, so far."""
        folder = os.environ.get(TIMINGS_ENV)
        if not folder:
            return
        timings, now = self._timings, time.perf_counter()
        waited = started - self._idle_since
        if timings["first_wait"] is None:
            timings["first_wait"] = waited  # from the model's load to the first block: the pipeline filling
        else:
            timings["waited"] += waited
        timings["busy"] += now - started
        timings["calls"] += 1
        timings["rows"] += rows
        self._idle_since = now
        with open(os.path.join(folder, f"actor-{os.getpid()}.json"), "w") as stream:
            json.dump(timings, stream)

    def _score(self, batch: pa.Table) -> pa.Table:
        texts, pairs = _column_texts(batch, self.column), _column_texts(batch, self.pair_column)
        keys: list[Any] = texts if pairs is None else list(zip(texts, pairs))
        flags = []
        for index, (classifier, group, names) in enumerate(zip(self.classifiers, self.groups, self.names)):
            hit = None
            if self.keys:
                hit = batch.column(ray_dataset.cache_column("hit", index)).to_numpy(zero_copy_only=False).astype(bool)
            wanted = np.ones(len(keys), dtype=bool) if hit is None else ~hit
            scores = classifier.run(classifier.planned(encoded_chunk(batch, group, wanted, keys, classifier)))
            probabilities, truncated, windows = scores.probabilities, scores.truncated, scores.windows
            if hit is not None:
                probabilities, truncated, windows, batch = self._with_cache(index, hit, scores, batch)
            arrays = prediction_arrays(probabilities, classifier.labels, self.all_scores, windows)
            for name, array in zip(names, arrays, strict=True):
                batch = batch.append_column(name, array)
            flags.append(truncated)
        for index, truncated in enumerate(flags):
            batch = batch.append_column(
                ray_dataset.truncated_column(index), pa.array(np.asarray(truncated, dtype=bool))
            )
        return _without_stage_columns(batch)

    def _with_cache(
        self, index: int, hit: np.ndarray, scores: Any, batch: pa.Table
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, pa.Table]:
        """The model's scores with the cache's hits filled in, and the columns the merge reads: the entries to add
        (rows scored now, and hits not used for a week) and the model key."""
        column = lambda kind: batch.column(ray_dataset.cache_column(kind, index))  # noqa: E731
        probabilities, truncated = scores.probabilities.copy(), scores.truncated.copy()
        windows = None if scores.windows is None else scores.windows.copy()
        width = probabilities.shape[1]
        if hit.any():
            found = column("found").combine_chunks().filter(pa.array(hit))
            probabilities[hit] = np.frombuffer(found.buffers()[1], dtype=np.float32)[
                found.offset * width : (found.offset + len(found)) * width
            ].reshape(-1, width)
            truncated[hit] = column("found_truncated").to_numpy(zero_copy_only=False).astype(bool)[hit]
            if windows is not None:
                windows[hit] = column("found_windows").to_numpy(zero_copy_only=False)[hit]
        digests = batch.column(ray_dataset.DIGEST).is_valid().to_numpy(zero_copy_only=False)
        stale = column("stale").to_numpy(zero_copy_only=False).astype(bool)
        store = (digests & ~hit) | stale
        values = [row.tobytes() if keep else None for row, keep in zip(probabilities, store)]
        batch = batch.append_column(ray_dataset.cache_column("store", index), pa.array(values, pa.binary(4 * width)))
        if windows is not None:
            batch = batch.append_column(ray_dataset.cache_column("windows", index), pa.array(windows.astype(np.int32)))
        key = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(len(hit), dtype=np.int32)), pa.array([self.keys[index].key])
        )
        return probabilities, truncated, windows, batch.append_column(ray_dataset.cache_column("key", index), key)


def _without_stage_columns(batch: pa.Table) -> pa.Table:
    """The tokens and the cache's found values stay out of the parts: they were only for the actor."""
    dropped = [
        name
        for name in batch.column_names
        if name.startswith(
            (
                "__batchsent_tokens_",
                "__batchsent_types_",
                "__batchsent_over_",
                "__batchsent_cache_found",
                "__batchsent_cache_stale",
            )
        )
    ]
    return batch.drop_columns(dropped) if dropped else batch
