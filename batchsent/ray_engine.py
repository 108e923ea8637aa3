"""--engine ray: the same scoring on Ray Data, across cores, GPUs and nodes.

Ray reads the files (CSV/TSV with every column as text, as the local engine does), a
callable class wrapping the same Classifier and post-processing scores each batch (the
model loads once per actor), and Ray writes a folder of Parquet or CSV files. Inputs,
columns and the output folder are checked before the cluster does any work.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from . import io
from .sources import expand
from .errors import InputError, OutputError, UsageError
from .job import ModelSummary, RunSummary, check_input_columns, check_model_columns, check_new_columns
from .lock import OutputLock
from .options import JobConfig, ScoringModel
from .postprocess import column_names, prediction_arrays


def check_ray_installed() -> None:
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise UsageError("--engine ray needs Ray Data: pip install 'batchsent[ray]'")


def expand_inputs(spec: str) -> list[Path]:
    """A file, a folder or a glob (see ``sources.expand``), in a format Ray Data reads here."""
    inputs = expand(spec)
    if inputs.format == "jsonl" or any(io.compression(path) for path in inputs.files):
        raise InputError(f"{spec}: --engine ray reads plain CSV, TSV and Parquet; score JSON Lines and compressed "
                         "files with the local engine")  # fmt: skip
    return inputs.files


def check_label_columns(config: JobConfig, schema: pa.Schema, path: Path) -> None:
    """Columns named after labels (--all-scores) checked on the driver, from the models' configs in the local
    cache, before Ray starts; a model not cached here is checked when its actors load it."""
    from transformers import AutoConfig

    if not config.all_scores:
        return
    wanted, names = config.scoring_models(), []
    for model in wanted:
        labels = list(model.options.candidate_labels)
        if not labels:
            try:
                loaded = AutoConfig.from_pretrained(model.options.model, revision=model.options.revision or "main",
                                                    local_files_only=True,
                                                    trust_remote_code=model.options.trust_remote_code)  # fmt: skip
            except Exception:  # noqa: BLE001 - not here: the actors report it
                return
            labels = [str(loaded.id2label[i]) for i in range(loaded.num_labels)]
        names.append(column_names(labels, model.prefix, True, model.options.long_text == "chunk"))
    check_model_columns(names, wanted)
    check_new_columns([name for group in names for name in group], schema, path, wanted[0].name is not None)


def check_inputs(paths: list[Path], config: JobConfig) -> pa.Schema:
    """The same checks and messages as the local engine, on every file, before Ray starts."""
    schema = None
    for path in paths:
        reader = io.open_reader(path)
        try:
            reader.text_column(config.column)
            check_input_columns(config, reader.schema, path)
            if schema is None:
                schema = reader.schema
            elif reader.schema.names != schema.names:
                raise InputError(f"{path}: its columns differ from {paths[0].name}'s")
        finally:
            reader.close()
    return schema


RAY_CONNECT_SECONDS = 10


def check_ray_address(address: str | None) -> None:
    """Refuse a ``--ray-address`` (``host:port`` or ``ray://host:port``) that does not answer, before Ray tries:
    ``ray.init`` would retry for minutes. ``auto`` and no address (a local Ray for this job) need no check."""
    if address is None or address == "auto" or address.startswith("local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, separator, port = target.rpartition(":")
    if not separator or not port.isdigit():
        raise UsageError(f"--ray-address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_SECONDS).close()
    except OSError as error:
        raise UsageError(f"--ray-address {address}: cannot reach the Ray cluster ({error.strerror or error}); "
                         "check the address, or leave it out to start a local Ray for this job") from None  # fmt: skip


def default_output(spec: str) -> Path:
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?[") and not path.exists():
        raise UsageError("--engine ray with a glob needs --output DIR")
    base = path if path.is_dir() else path.with_suffix("")
    return base.with_name(f"{base.name}.scored")


class RayScorer:
    """Map-batches callable: the local engine's Classifiers and columns, loaded once per actor.

    With several models each actor holds them all: a batch is read once, tokenized once per
    shared tokenizer (``encode_each``), scored by each model and written with every model's columns.
    """

    def __init__(self, models: list[ScoringModel], column: str, all_scores: bool, counter: Any) -> None:
        from .model import Classifier

        self.models = models
        self.classifiers = [Classifier(model.options) for model in models]
        self.column, self.all_scores, self.counter = column, all_scores, counter
        self.names = [column_names(classifier.labels, model.prefix, all_scores, classifier.long_text == "chunk")
                      for model, classifier in zip(models, self.classifiers)]  # fmt: skip
        check_model_columns(self.names, models)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from .model import encode_each

        texts = io.text_values(pa.concat_arrays(batch.column(self.column).chunks) if batch.num_rows else pa.array([], pa.string()))
        chunks = encode_each(self.classifiers, [(texts, None)] * len(self.classifiers))
        truncated, blank, single_labels = np.zeros(len(texts), dtype=bool), None, {}
        for model, classifier, chunk, names in zip(self.models, self.classifiers, chunks, self.names):
            scores = classifier.run(chunk)
            arrays = prediction_arrays(scores.probabilities, classifier.labels, self.all_scores, scores.windows)
            labels = dict(Counter(label for label in arrays[0].to_pylist() if label is not None))
            truncated, blank = truncated | scores.truncated, scores.blank
            if model.name is None:
                single_labels = labels
            else:
                self.counter.add.remote(model.name, batch.num_rows, int(scores.blank.sum()),
                                        int(scores.truncated.sum()), labels, classifier.where)  # fmt: skip
            for name, array in zip(names, arrays, strict=True):
                batch = batch.append_column(name, array)
        self.counter.add.remote(None, batch.num_rows, int(blank.sum()), int(truncated.sum()), single_labels, "")
        return batch


def _counter_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class Totals:
        """Counts per model (``None``: the model of a single-model run), added as the actors score."""

        def __init__(self) -> None:
            self.models: dict[str | None, dict[str, Any]] = {}

        def add(self, name: str | None, rows: int, empty: int, truncated: int, labels: dict[str, int], where: str) -> None:
            totals = self.models.setdefault(name, {"rows": 0, "empty": 0, "truncated": 0, "labels": Counter(),
                                                   "where": where})  # fmt: skip
            totals["rows"] += rows
            totals["empty"] += empty
            totals["truncated"] += truncated
            totals["labels"].update(labels)

        def totals(self) -> dict[str | None, dict[str, Any]]:
            return self.models

    return Totals


def output_folder(config: JobConfig) -> Path:
    """Where a Ray run writes: --output, or ``<input>.scored`` beside a file or folder input."""
    return config.output or default_output(str(config.input))


def run_ray(config: JobConfig, record: dict[str, Any] | None = None) -> RunSummary:
    """Score ``config.input`` (a file, folder or glob) on Ray into an output folder; returns the local engine's summary."""
    started = time.monotonic()
    record = {} if record is None else record
    check_ray_installed()
    check_ray_address(config.ray_address)
    paths = expand_inputs(str(config.input))
    from .model import check_custom_code

    for model in config.scoring_models():  # from the driver's copy where it has one; the actors check their own
        check_custom_code(model.options.model, model.options.revision, True, model.options.trust_remote_code)
    check_label_columns(config, check_inputs(paths, config), paths[0])
    output = output_folder(config)
    if output.exists() and not config.overwrite:
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise OutputError(f"{output}: the folder {output.parent} does not exist")
    record["output"] = output
    with OutputLock(output):
        totals = _score_on_cluster(config, paths, output)
    nothing = {"rows": 0, "empty": 0, "truncated": 0, "labels": {}, "where": ""}
    job = totals.get(None, nothing)  # every row once; in a multi-model run, truncated by any model
    where = f"ray, {config.workers} worker{'s' if config.workers > 1 else ''}"
    models = []
    for model in config.scoring_models():
        if model.name is not None:
            counts = totals.get(model.name, nothing)
            models.append(ModelSummary(model.name, dict(sorted(counts["labels"].items())), counts["truncated"],
                                       chunked=model.options.long_text == "chunk", where=f"{where}, {counts['where']}"))  # fmt: skip
    labels = dict(sorted(job["labels"].items()))
    record["labels"] = list(labels)
    record["models"] = [{"name": model.name, "labels": list(model.label_counts)} for model in models]
    return RunSummary(config.input, output, job["rows"], job["rows"] - job["empty"], job["empty"], job["truncated"],
                      time.monotonic() - started, labels, any(m.options.long_text == "chunk" for m in config.scoring_models()),
                      where=where, models=tuple(models))  # fmt: skip


def _score_on_cluster(config: JobConfig, paths: list[Path], output: Path) -> dict[str | None, dict[str, Any]]:
    """Start (or join) Ray, score every file with actors, publish the output folder; returns the counts."""
    import ray
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR if config.quiet else logging.WARNING)
    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 logging_level="ERROR")  # fmt: skip
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = not config.quiet
        counter = _counter_class().remote()
        scored = _scored_dataset(ray, _read(ray.data, paths), config, counter)
        _publish(scored, output, io.FORMATS.get(output.suffix.lower(), "parquet"))
        return ray.get(counter.totals.remote())
    finally:
        if started_here:
            ray.shutdown()


def _scored_dataset(ray: Any, dataset: Any, config: JobConfig, counter: Any) -> Any:
    """The input dataset mapped through RayScorer actors (fractional CPUs: 2-core machines do not starve)."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    models = []
    for model in config.scoring_models():
        options = model.options
        if options.threads is None and config.gpus_per_worker == 0:
            options = replace(options, threads=max(1, cpus // config.workers))
        if config.gpus_per_worker > 0 and options.device == "auto":
            options = replace(options, device="cuda")
        models.append(replace(model, options=options))
    return dataset.map_batches(
        RayScorer,
        fn_constructor_kwargs={"models": models, "column": config.column, "all_scores": config.all_scores,
                               "counter": counter},
        batch_format="pyarrow",
        batch_size=config.chunk_rows,
        compute=ray.data.ActorPoolStrategy(size=config.workers),
        num_cpus=min(0.5, cpus / (config.workers + 1)),  # whole-CPU actors would starve the read and write tasks
        num_gpus=config.gpus_per_worker or None,
    )  # fmt: skip


def _publish(scored: Any, output: Path, fmt: str) -> None:
    """Write into a staging folder beside ``output`` and rename it into place when complete."""
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        if fmt == "parquet":
            scored.write_parquet(str(staging))
        else:
            delimiter = "\t" if fmt == "tsv" else ","
            scored.write_csv(str(staging), arrow_csv_args_fn=lambda: {"write_options": pacsv.WriteOptions(delimiter=delimiter)})
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _read(data: Any, paths: list[Path]) -> Any:
    fmt = io.file_format(paths[0])
    files = [str(p) for p in paths]
    if fmt == "parquet":
        return data.read_parquet(files)
    reader = io.open_reader(paths[0])
    names = reader.schema.names
    reader.close()
    delimiter = "\t" if fmt == "tsv" else ","
    return data.read_csv(
        files,
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if fmt == "csv" else False,
                                         newlines_in_values=fmt == "csv"),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False),
    )  # fmt: skip
