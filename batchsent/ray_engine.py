"""--engine ray: the same scoring on Ray Data, across cores, GPUs and nodes.

Every input the local engine takes (files, folders, globs and object prefixes; CSV, TSV,
JSON Lines and Parquet, plain or compressed) is read by the local engine's readers inside
Ray read tasks (``ray_io``), scored by actors that wrap the same Classifier and
post-processing (the model loads once per actor), and written as parts beside the output.
When Ray is done, the driver merges each input file's parts, in row order and each row
once, into one output file named as the input (the local engine's writers), then
publishes the folder (or uploads each file to the output prefix). ``--resume`` uses Ray
Data's checkpointing, keyed by each row's stable id. Inputs, columns and the output are
checked before the cluster does any work.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import io, ray_io
from .checkpoint import ResumeMismatch, first_difference
from .errors import BatchsentError, OutputError, ScoringError, UsageError, first_line
from .identity import input_fingerprint, model_identity
from .job import ModelSummary, RunSummary, check_input_columns, check_model_columns, check_new_columns
from .lock import OutputLock
from .options import JobConfig
from .postprocess import column_names
from .sources import InputFiles, expand
from .storage import filesystem_of, is_url, redact, remote, upload


def check_ray_installed() -> None:
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise UsageError("--engine ray needs Ray Data: pip install 'batchsent[ray]'")


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


def check_inputs(inputs: InputFiles, config: JobConfig) -> list[pa.Schema]:
    """The local engine's checks and messages on every file, before Ray starts; each file's schema as read
    (JSON Lines: the line and its text keys, with the metadata the writer needs)."""
    schemas = []
    for path in inputs.files:
        reader = io.open_reader(path)
        try:
            reader.text_column(config.column)
            if config.pair_column is not None:
                reader.text_column(config.pair_column, "--pair-column")
            check_input_columns(config, reader.schema, path)  # type: ignore[arg-type]
            schemas.append(reader.schema)
        finally:
            reader.close()
    return schemas


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


def output_folder(config: JobConfig) -> Path | str:
    """Where a Ray run writes: --output (a local folder or an object prefix), or ``<input>.scored`` beside a
    local file or folder."""
    if config.output is not None:
        return str(config.output).rstrip("/") if is_url(config.output) else Path(config.output).expanduser()
    spec = str(config.input)
    if is_url(spec):
        raise UsageError("--engine ray with an object-storage input needs --output (a local folder or a URL prefix)")
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?[") and not path.exists():
        raise UsageError("--engine ray with a glob needs --output DIR")
    base = path if path.is_dir() else path.with_suffix("")
    return base.with_name(f"{base.name}.scored")


def progress_location(output: Path | str) -> str:
    """Beside the output, kept until the run is published: its parts, Ray's checkpoint and what the run was."""
    text = str(output).rstrip("/")
    parent, _, name = text.rpartition("/")
    return f"{parent or '.'}/.{name}.batchsent-ray"


def _fingerprint(config: JobConfig, inputs: InputFiles) -> dict[str, Any]:
    """What a --resume must find unchanged: each input file's content and every option that changes the output."""
    runtime = {"resume", "overwrite", "quiet", "manifest", "report", "log_format", "workers", "ray_address",
               "gpus_per_worker", "threads", "chunk_rows", "device", "output", "cache"}  # fmt: skip
    options = {key: value for key, value in config.described().items() if key not in runtime}
    files = {str(inputs.relative(path)): input_fingerprint(path) for path in inputs.files}
    models = [_model_fingerprint(model.options.model, model.options.revision) for model in config.scoring_models()]
    return json.loads(json.dumps({"inputs": files, "models": models, "options": options}, default=str))


def _model_fingerprint(model_ref: str, revision: str | None) -> dict[str, Any]:
    """A local folder by the content of its files (as the local engine keys it); a Hub id by id and revision."""
    if Path(model_ref).expanduser().is_dir():
        return model_identity(model_ref, None)
    return {"hub_id": model_ref, "revision": revision}


class _Progress:
    """The folder (or prefix) of an unpublished Ray run: ``parts/``, ``checkpoint/`` and ``run.json``."""

    def __init__(self, output: Path | str) -> None:
        self.location = progress_location(output)
        self.parts = f"{self.location}/parts"
        self.checkpoint = f"{self.location}/checkpoint"
        self.filesystem, self.root = filesystem_of(self.location)

    def exists(self) -> bool:
        from pyarrow import fs

        return self.filesystem.get_file_info(f"{self.root}/run.json").type != fs.FileType.NotFound

    def read(self) -> dict[str, Any]:
        try:
            with self.filesystem.open_input_stream(f"{self.root}/run.json") as stream:
                return json.loads(stream.read().decode("utf-8"))
        except (OSError, ValueError) as error:
            raise OutputError(f"{self.location}/run.json: damaged ({first_line(error)}); pass --overwrite to start over") from error

    def start(self, fingerprint: dict[str, Any]) -> None:
        self.filesystem.create_dir(self.root, recursive=True)
        with self.filesystem.open_output_stream(f"{self.root}/run.json") as stream:
            stream.write(json.dumps(fingerprint).encode("utf-8"))

    def has_parts(self) -> bool:
        from pyarrow import fs

        selector = fs.FileSelector(f"{self.root}/parts", recursive=True, allow_not_found=True)
        return any(info.type == fs.FileType.File for info in self.filesystem.get_file_info(selector))

    def remove(self) -> None:
        from pyarrow import fs

        if self.filesystem.get_file_info(self.root).type != fs.FileType.NotFound:
            self.filesystem.delete_dir(self.root)


def run_ray(config: JobConfig, record: dict[str, Any] | None = None) -> RunSummary:
    """Score ``config.input`` on Ray into an output folder or prefix, one file per input file; returns the summary."""
    started = time.monotonic()
    record = {} if record is None else record
    check_ray_installed()
    check_ray_address(config.ray_address)
    inputs = expand(str(config.input))
    from .model import check_custom_code

    for model in config.scoring_models():  # from the driver's copy where it has one; the actors check their own
        check_custom_code(model.options.model, model.options.revision, True, model.options.trust_remote_code)
    schemas = check_inputs(inputs, config)
    check_label_columns(config, schemas[0], inputs.files[0])  # type: ignore[arg-type]
    output = output_folder(config)
    record["output"] = output
    with contextlib.nullcontext() if isinstance(output, str) else OutputLock(_checked_local_output(output)):
        progress = _Progress(output)
        fingerprint = _fingerprint(config, inputs)
        try:
            resumed = _prepare_progress(config, progress, fingerprint, output)
        except OSError as failure:  # a missing bucket, denied credentials: before the cluster does any work
            raise OutputError(f"{redact(str(output))}: {first_line(failure)}") from None
        record["ray_progress"] = progress.location
        try:
            cache = _open_cache(config)  # once the output is known to be free: a refused run is not recorded in it
            counts = _score_and_publish(config, inputs, schemas, output, progress, resumed, cache)
        except BaseException:
            if not resumed and not progress.has_parts():  # nothing scored: nothing to resume, nothing left behind
                progress.remove()
                record.pop("ray_progress")
            raise
        progress.remove()
    return _summary(config, output, counts, started, record)


def _open_cache(config: JobConfig) -> Any:
    """The shared cache of ``--cache``, checked (a batchsent cache, or a new one) and written to (the run is
    recorded) before the cluster does any work; None without --cache. (A cache inside the output folder was
    refused with the other path claims.)"""
    if config.cache is None:
        return None
    from . import __version__
    from .shared_cache import SharedCache

    cache = SharedCache(str(config.cache))
    cache.start_run(__version__)
    return cache


def _checked_local_output(output: Path) -> Path:
    if not output.parent.is_dir():
        raise OutputError(f"{output}: the folder {output.parent} does not exist")
    return output


def _prepare_progress(config: JobConfig, progress: _Progress, fingerprint: dict[str, Any], output: Path | str) -> bool:
    """Refuse or clear what an interrupted run left, as the local engine does; True when resuming it."""
    if progress.exists():
        if config.resume:
            changed = first_difference(progress.read(), fingerprint, "")
            if changed:
                raise ResumeMismatch(f"cannot resume: {changed} changed since the interrupted run; pass --overwrite "
                                     "to start over")  # fmt: skip
            return True
        if not config.overwrite:
            raise OutputError(f"{output}: an interrupted Ray run left its progress in {progress.location}; pass "
                              "--resume to continue it or --overwrite to start over")  # fmt: skip
        progress.remove()
    if _output_exists(output) and not config.overwrite:
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    progress.start(fingerprint)
    return False


def _output_exists(output: Path | str) -> bool:
    from pyarrow import fs

    if isinstance(output, Path):
        return output.exists()
    location = remote(output + "/", OutputError)
    try:
        listing = location.fs.get_file_info(fs.FileSelector(location.path.rstrip("/"), allow_not_found=True))
    except OSError as failure:
        raise OutputError(f"{output}: {first_line(failure)}") from None
    return bool(listing)


def _score_and_publish(config: JobConfig, inputs: InputFiles, schemas: list[pa.Schema], output: Path | str,
                       progress: _Progress, resumed: bool, cache: Any) -> ray_io.MergeCounts:  # fmt: skip
    """Run the Ray pipeline into parts (skipping rows a resumed run's checkpoint holds), then merge and publish;
    with a shared cache, the run's new entries are added to it before the output is published."""
    _score_on_cluster(config, inputs, progress, resumed, cache)
    label_columns = [f"{model.prefix}label" for model in config.scoring_models()]
    counts = ray_io.MergeCounts()
    entries = None
    if cache is not None:
        from .shared_cache import EntryWriter

        entries = EntryWriter(cache, int(time.time()))
    staging = Path(tempfile.mkdtemp(prefix=f".{Path(str(output)).name}.", suffix=".staging",
                                    dir=output.parent if isinstance(output, Path) else None))  # fmt: skip
    try:
        written = []
        for index, (source, schema) in enumerate(zip(inputs.files, schemas, strict=True)):
            relative = inputs.relative(source)
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            ray_io.merge_parts(progress.parts, index, str(source), schema, label_columns, target, counts, entries)
            written.append(relative)
        if entries is not None:
            _flush_entries(entries)
        _publish(staging, output, written)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def _flush_entries(entries: Any) -> None:
    from .cache import CacheError

    try:
        entries.flush()
    except OSError as error:
        raise CacheError(f"--cache {entries.cache.shown}: cannot write: {first_line(error)}; run the same command "
                         "with --resume to try again") from None  # fmt: skip


def _publish(staging: Path, output: Path | str, written: list[Path]) -> None:
    """A local folder appears whole (one rename); an object prefix gets each file once it is complete, and a
    failed upload deletes what this run uploaded."""
    if isinstance(output, Path):
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(staging, output)
        return
    uploaded = []
    try:
        for relative in written:
            location = remote(f"{output}/{relative.as_posix()}", OutputError)
            upload(staging / relative, location)
            uploaded.append(location)
    except BaseException:
        for location in uploaded:
            with contextlib.suppress(Exception):
                location.fs.delete_file(location.path)
        raise


def _summary(config: JobConfig, output: Path | str, counts: ray_io.MergeCounts, started: float,
             record: dict[str, Any]) -> RunSummary:  # fmt: skip
    where = f"ray, {config.workers} worker{'s' if config.workers > 1 else ''}"
    wanted = config.scoring_models()
    per_model = counts.models or [ray_io.ModelCounts() for _ in wanted]
    models = tuple(ModelSummary(model.name, dict(sorted(found.labels.items())), found.truncated, found.cached,
                                chunked=model.options.long_text == "chunk", where=where)
                   for model, found in zip(wanted, per_model) if model.name is not None)  # fmt: skip
    labels = dict(sorted(per_model[0].labels.items())) if wanted[0].name is None else {}
    record["labels"] = list(labels)
    record["models"] = [{"name": model.name, "labels": list(model.label_counts)} for model in models]
    return RunSummary(config.input, output, counts.rows, counts.rows - counts.empty, counts.empty, counts.truncated,
                      time.monotonic() - started, labels, any(m.options.long_text == "chunk" for m in wanted),
                      where=where, cached=counts.cached, models=models)  # fmt: skip


LIGHT_TASK_CPUS = 0.25  # reading and writing parts is mostly I/O: whole-CPU tasks would wait behind the scorers


def _score_on_cluster(config: JobConfig, inputs: InputFiles, progress: _Progress, resumed: bool, cache: Any) -> None:
    """Start (or join) Ray and run read -> score -> parts, with Ray Data's checkpointing keyed by row id."""
    import ray
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    # Failures come back from Ray as exceptions and leave as one line: Ray's own printed stack traces stay out.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # failures come back as exceptions, in one line
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 logging_level="ERROR")  # fmt: skip
    try:
        _quiet_ray_error_listener()
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = not config.quiet
        filesystem, root = filesystem_of(progress.checkpoint)
        context.checkpoint_config = CheckpointConfig(id_column=ray_io.ROW_ID, checkpoint_path=progress.checkpoint,
                                                     delete_checkpoint_on_success=False,
                                                     override_filesystem=filesystem)  # fmt: skip
        # Its filter actors (on --resume) take a whole CPU each: one is enough, and more would starve the scorers.
        context.checkpoint_config.checkpoint_actor_pool_max_size = 1
        files = [str(path) for path in inputs.files]
        source = ray_io.make_datasource(files, config.column, config.pair_column, config.chunk_rows,
                                        _reserved_names(config))  # fmt: skip
        # One read task per file, its blocks as the reader chunks them (Ray would otherwise split them small).
        dataset = ray.data.read_datasource(source, num_cpus=LIGHT_TASK_CPUS, override_num_blocks=len(files))
        with warnings.catch_warnings():  # "at-least-once": a row written twice is kept once when the parts merge
            warnings.filterwarnings("ignore", message="Checkpointing with non-file datasink")
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")  # fewer files than --workers
            try:
                _scored_dataset(ray, dataset, config, cache).write_datasink(ray_io.make_datasink(progress.parts),
                                                                     ray_remote_args={"num_cpus": LIGHT_TASK_CPUS})  # fmt: skip
            except ray.exceptions.RayError as error:
                raise _worker_failure(error) from error
    finally:
        with contextlib.suppress(Exception):
            ray.data.DataContext.get_current().checkpoint_config = None
        if started_here:
            ray.shutdown()


def _worker_failure(error: BaseException) -> BatchsentError:
    """A Ray task or actor failure as batchsent's own error: the worker's BatchsentError as it was raised
    (a bad input line, a node that cannot load the model), anything else as a scoring failure in one line."""
    from . import errors

    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, BatchsentError):
        cause = getattr(cause, "cause", None) or cause.__cause__
    if cause is not None:
        found = type(cause).__new__(type(cause))
        found.args = cause.args
        return found
    # An actor that died in its constructor keeps only the text of the error it raised.
    raised = re.findall(r"batchsent\.errors\.(\w+): (.+)", str(error))
    kind = getattr(errors, raised[-1][0], None) if raised else None
    if isinstance(kind, type) and issubclass(kind, BatchsentError):
        return kind(raised[-1][1])
    return ScoringError(f"a Ray worker failed: {_deepest_cause(error)}")


def _deepest_cause(error: BaseException) -> str:
    """The error a worker's code raised, in one line, under Ray's wrappers (RayTaskError, UserCodeException)."""
    found, seen = error, set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if not type(cause).__module__.startswith("ray"):
            found = cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    if found is not error:
        return f"{type(found).__name__}: {first_line(found)}"
    raised = re.findall(r"^(\w+(?:Error|Exception)): (.+)$", str(error), re.MULTILINE)
    return f"{raised[-1][0]}: {raised[-1][1]}" if raised else first_line(error)


def _quiet_ray_error_listener() -> None:
    """Keep Ray's driver from printing workers' failures (with their stack traces) to stdout as they happen:
    the run reports each failure itself, in one line. Only messages from the raylet are held back."""
    from ray._private import worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "batchsent_quiet", False):
        return

    def print_unless_raylet(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            logging.getLogger("batchsent.ray").debug("%s", "\n".join(data.get("lines", [])))
            return
        printer(data, ignore_prefix)

    print_unless_raylet.batchsent_quiet = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_unless_raylet


def _reserved_names(config: JobConfig) -> set[str]:
    """Prediction keys a JSON Lines object must not have already (label and score of each model)."""
    return {f"{model.prefix}{name}" for model in config.scoring_models() for name in ("label", "score")}


def _scored_dataset(ray: Any, dataset: Any, config: JobConfig, cache: Any) -> Any:
    """The input dataset through the tokenizing tasks (``prepare_block``) and the RayScorer actors (fractional
    CPUs: 2-core machines do not starve); with a shared cache, the actors' model keys are learnt first by one
    task with their resources."""
    from .ray_scoring import RayScorer, cache_keys, prepare_block

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    models = []
    for model in config.scoring_models():
        options = model.options
        if options.threads is None and config.gpus_per_worker == 0:
            options = replace(options, threads=max(1, cpus // config.workers))
        if config.gpus_per_worker > 0 and options.device == "auto":
            options = replace(options, device="cuda")
        models.append(replace(model, options=options))
    location = None if cache is None else cache.location
    keys = None
    if cache is not None:
        probe = ray.remote(cache_keys).options(num_cpus=LIGHT_TASK_CPUS, num_gpus=config.gpus_per_worker or None)
        keys = ray.get(probe.remote(models, location, config.pair_column is not None))
    actor_cpus = min(0.5, cpus / (config.workers + 1))  # whole-CPU actors would starve the read, tokenize and write tasks
    prepared = dataset.map_batches(prepare_block, fn_kwargs={"models": models, "column": config.column,
                                                             "pair_column": config.pair_column,
                                                             "cache": location, "keys": keys,
                                                             "run": None if cache is None else cache.run},
                                   batch_format="pyarrow", batch_size=config.chunk_rows, num_cpus=actor_cpus)  # fmt: skip
    return prepared.map_batches(
        RayScorer,
        fn_constructor_kwargs={"models": models, "column": config.column, "all_scores": config.all_scores,
                               "cache": location, "keys": keys, "pair_column": config.pair_column},
        batch_format="pyarrow",
        batch_size=config.chunk_rows,
        compute=ray.data.ActorPoolStrategy(size=config.workers),
        num_cpus=actor_cpus,
        num_gpus=config.gpus_per_worker or None,
    )  # fmt: skip
