"""--engine ray: the same scoring on Ray Data, across cores, GPUs and nodes.

Every input the local engine takes (files, folders, globs and object prefixes; CSV, TSV,
JSON Lines and Parquet, plain or compressed) is read by the local engine's readers inside
Ray read tasks (``engine.ray.dataset``), scored by actors that wrap the same Classifier and
post-processing (the model loads once per actor), and written as parts beside the output.
When Ray is done, the driver merges each input file's parts, in row order and each row
once, into one output file named as the input (the local engine's writers), then
publishes the folder (or uploads each file to the output prefix). ``--resume`` uses Ray
Data's checkpointing, keyed by each row's stable id. Inputs, columns and the output are
checked before the cluster does any work.
"""

from __future__ import annotations

import _thread
import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

import pyarrow as pa

from batchsent.data import formats, readers
from batchsent.data.sources import InputFiles, expand
from batchsent.data.storage import (
    filesystem_of,
    native_stderr_silenced,
    publish,
    publish_folder,
    redact,
    remote,
    upload,
)
from batchsent.engine.checks import check_model_columns, check_new_columns, check_reader
from batchsent.engine.fingerprint import model_reference_key, options_key
from batchsent.engine.ray import dataset as ray_dataset
from batchsent.engine.record import RunRecord, lift_single_model
from batchsent.engine.summary import ModelTotals, RunSummary, RunTotals, build_summary
from batchsent.errors import BatchsentError, Interrupted, OutputError, ScoringError, UsageError, first_line
from batchsent.model.postprocess import column_names, output_fields
from batchsent.model.setup import config_labels, kept_setup
from batchsent.settings.naming import output_location, ray_progress_location, staging_folder
from batchsent.settings.options import JobConfig
from batchsent.state.checkpoint import ResumeMismatch, first_difference
from batchsent.state.identity import input_fingerprint
from batchsent.state.lock import output_lock


def check_ray_installed() -> None:
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise UsageError("--engine ray needs Ray Data: pip install 'batchsent[ray]'")


def output_columns(
    config: JobConfig, inputs: InputFiles, schemas: list[pa.Schema]
) -> tuple[set[str], list[pa.Field] | None]:
    """Every column the run adds, checked against every input file before Ray starts (as the local engine checks
    them); the readers refuse a JSON Lines object that holds one. Columns named after labels (--all-scores) come
    from the models' kept setups, else their configs in this machine's cache (transformers is then imported); a model
    not cached here is checked when its actors load it."""
    wanted, names, fields, known = config.scoring_models(), [], [], True
    for model in wanted:
        labels = list(model.options.candidate_labels)
        if config.all_scores and not labels:
            kept = kept_setup(model.options.model, model.options.revision)
            if kept is not None:
                labels = list(kept.labels)
            else:
                try:
                    from transformers import AutoConfig

                    loaded = AutoConfig.from_pretrained(
                        model.options.model,
                        revision=model.options.revision or "main",
                        local_files_only=True,
                        trust_remote_code=model.options.trust_remote_code,
                    )
                    labels = list(config_labels(loaded))
                except Exception:
                    known = False
        names.append(column_names(labels, model.prefix, config.all_scores, model.options.long_text == "chunk"))
        fields += output_fields(labels, model.prefix, config.all_scores, model.options.long_text == "chunk")
    if known:
        check_model_columns(names, wanted)
    every = [name for group in names for name in group]
    for path, schema in zip(inputs.files, schemas, strict=True):
        check_new_columns(every, schema, path, wanted[0].name is not None)
    return set(every), fields if known else None


@dataclass
class InputsRead:
    """What the driver's checks read of the inputs: each file's schema as read (JSON Lines: the line and its text
    keys, with the metadata the writer needs), and their rows (None where a file does not say) and bytes."""

    schemas: list[pa.Schema]
    total_rows: int | None
    sizes: list[int]  # each file's bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)


def check_inputs(inputs: InputFiles, config: JobConfig) -> InputsRead:
    """The local engine's checks and messages on every file, before Ray starts."""
    schemas, rows, sizes = [], [], []
    for path in inputs.files:
        reader = readers.open_reader(path)
        try:
            check_reader(config, reader, path)
            schemas.append(reader.schema)
            rows.append(reader.total_rows)
            sizes.append(reader.total_bytes)
        finally:
            reader.close()
    return InputsRead(schemas, None if None in rows else sum(rows), sizes)  # type: ignore[arg-type]


RAY_CONNECT_SECONDS = 10


def check_ray_address(address: str | None, named: str = "--ray-address") -> None:
    """Refuse a ``--ray-address`` (``host:port`` or ``ray://host:port``) that does not answer, before Ray tries:
    ``ray.init`` would retry for minutes. ``auto`` and no address (a local Ray for this job) need no check."""
    if address is None or address == "auto" or address.startswith("local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, separator, port = target.rpartition(":")
    if not separator or not port.isdigit():
        raise UsageError(f"{named} {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_SECONDS).close()
    except OSError as error:
        raise UsageError(
            f"{named} {address}: cannot reach the Ray cluster ({error.strerror or error}); "
            "check the address, or leave it out to start a local Ray for this job"
        ) from None


def ray_started_here(config: JobConfig) -> bool:
    """Whether the run starts a Ray of its own on this machine (no --ray-address, no $RAY_ADDRESS): then this
    machine's CPUs, GPUs and models are the cluster's, and can be checked before Ray starts."""
    return config.ray_address is None and not os.environ.get("RAY_ADDRESS")


def check_local_resources(config: JobConfig) -> None:
    """A Ray started for this job runs on this machine: its workers must fit its CPUs, and the GPUs asked for
    must exist, or Ray would wait for them forever. (A cluster's own resources are its scheduler's to judge.)"""
    if not ray_started_here(config):
        return
    from batchsent.settings.options import usable_cpus

    if config.workers > usable_cpus():
        raise UsageError(
            f"--workers {config.workers}: a local Ray on this machine has {usable_cpus()} CPUs; give at "
            f"most {usable_cpus()}, or --ray-address of a larger cluster"
        )
    if config.gpus_per_worker:
        from batchsent.runtime.device import cuda_device_count

        needed, present = config.workers * config.gpus_per_worker, cuda_device_count()
        if needed > present:
            raise UsageError(
                f"--workers {config.workers} x --gpus-per-worker {config.gpus_per_worker:g} needs {needed:g} "
                f"GPUs; this machine has {present}"
            )


def check_models_here(config: JobConfig) -> None:
    """A Ray started for this job runs on this machine: each model's tokenizer, config and device are checked here,
    as the local engine checks them, before the cluster starts (its weights load in the actors). ``fast`` is
    checked as exact: its tuning belongs to the actors."""
    if not ray_started_here(config):
        return  # the cluster's nodes, not this one, hold the models and devices
    from batchsent.model.classifier import Classifier

    for model in config.scoring_models():
        options = model.options if model.options.precision != "fast" else replace(model.options, precision="exact")
        Classifier(options, weights=False)


def _fingerprint(config: JobConfig, inputs: InputFiles) -> dict[str, Any]:
    """What a --resume must find unchanged (``batchsent.engine.fingerprint``): each input file's content, the result
    options and each model; the replay options are left out, since Ray does not replay blocks as they were."""
    output_format = formats.file_format(config.output_path, output=True) if not inputs.many else inputs.format
    return {
        "inputs": {str(inputs.relative(path)): input_fingerprint(path) for path in inputs.files},
        "models": [
            model_reference_key(model.options.model, model.options.revision) for model in config.scoring_models()
        ],
        "options": options_key(config, output_format, replayed=False),
    }


class _Progress:
    """The folder (or prefix) of an unpublished Ray run: ``parts/``, ``checkpoint/`` and ``run.json``."""

    def __init__(self, output: Path | str) -> None:
        self.location = ray_progress_location(output if isinstance(output, str) else output.resolve())  # workers' too
        self.parts = f"{self.location}/parts"
        self.rows = f"{self.location}/rows"  # each input's row count, recorded by its read task
        self.actors = f"{self.location}/actors"  # what each scoring actor ran (scoring.record_facts)
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
            raise OutputError(
                f"{self.location}/run.json: damaged ({first_line(error)}); pass --overwrite to start over"
            ) from error

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


def run_ray(config: JobConfig, record: RunRecord | None = None, display: Any = None) -> RunSummary:
    """Score ``config.input`` on Ray into an output folder or prefix, one file per input file; returns the summary.
    ``display`` (a job Progress) is told the rows committed as Ray scores them."""
    started = time.monotonic()
    record = RunRecord() if record is None else record
    check_ray_installed()
    if config.ray_address is not None:
        check_ray_address(config.ray_address)
    else:  # ray.init would take it from the environment
        check_ray_address(os.environ.get("RAY_ADDRESS"), "$RAY_ADDRESS")
    check_local_resources(config)
    inputs = expand(str(config.input))
    from batchsent.model.loading import check_custom_code

    for model in config.scoring_models():  # from the driver's copy where it has one; the actors check their own
        check_custom_code(model.options.model, model.options.revision, True, model.options.trust_remote_code)
    read = check_inputs(inputs, config)
    schemas = read.schemas
    reserved, fields = output_columns(config, inputs, schemas)
    check_models_here(config)
    output = output_location(config)
    record["output"] = output
    if isinstance(output, Path):
        _checked_local_output(output)
    if not inputs.many:  # one output file: its format, as the local engine checks it
        check_single_output(config, output, schemas[0])
    with output_lock(output) as lock:
        progress = _Progress(output)
        fingerprint = _fingerprint(config, inputs)
        record["fingerprint_models"] = fingerprint["models"]
        try:
            resumed = _prepare_progress(config, progress, fingerprint, output, not inputs.many)
        except OSError as failure:  # a missing bucket, denied credentials: before the cluster does any work
            raise OutputError(f"{redact(str(output))}: {first_line(failure)}") from None
        record["ray_progress"] = progress.location
        try:
            if ray_started_here(config):  # this machine is the cluster: check now
                from batchsent.settings.options import usable_cpus

                actor_cpus_for(usable_cpus(), config.workers, resumed)
            cache = _open_cache(config)  # once the output is known to be free: a refused run is not recorded in it
            counts = _score_and_publish(
                config, inputs, read, output, progress, resumed, cache, reserved, fields, lock, display, record
            )
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
    from batchsent import __version__
    from batchsent.cache.shared import SharedCache

    cache = SharedCache(str(config.cache))
    cache.start_run(__version__)
    return cache


def check_single_output(config: JobConfig, output: Path | str, schema: pa.Schema) -> None:
    """One input file's output file: a format of its own suffix (JSON Lines only from JSON Lines), able to hold the
    input's columns, and not a folder."""
    formats.check_output_format(config.input, output)
    formats.check_output_schema(schema, output, config.input)
    if isinstance(output, Path) and output.is_dir():
        raise OutputError(f"{output}: is a directory")


def _checked_local_output(output: Path) -> Path:
    if not output.parent.is_dir():
        raise OutputError(f"{output}: the folder {output.parent} does not exist")
    return output


def _prepare_progress(
    config: JobConfig, progress: _Progress, fingerprint: dict[str, Any], output: Path | str, single: bool
) -> bool:
    """Refuse or clear what an interrupted run left, as the local engine does; True when resuming it."""
    if progress.exists():
        if config.resume:
            changed = first_difference(progress.read(), fingerprint, "")
            if changed:
                raise ResumeMismatch(
                    f"cannot resume: {changed} changed since the interrupted run; pass --overwrite to start over"
                )
            return True
        if not config.overwrite:
            raise OutputError(
                f"{output}: an interrupted Ray run left its progress in {progress.location}; pass "
                "--resume to continue it or --overwrite to start over"
            )
        progress.remove()
    if _output_exists(output, single) and not config.overwrite:
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    progress.start(fingerprint)
    return False


def _output_exists(output: Path | str, single: bool) -> bool:
    from pyarrow import fs

    if isinstance(output, Path):
        return output.exists()
    if single:
        return remote(output, OutputError).info(OutputError).type != fs.FileType.NotFound
    location = remote(output + "/", OutputError)
    try:
        listing = location.fs.get_file_info(fs.FileSelector(location.path.rstrip("/"), allow_not_found=True))
    except OSError as failure:
        raise OutputError(f"{output}: {first_line(failure)}") from None
    return bool(listing)


def _score_and_publish(
    config: JobConfig,
    inputs: InputFiles,
    read: InputsRead,
    output: Path | str,
    progress: _Progress,
    resumed: bool,
    cache: Any,
    reserved: set[str],
    fields: list[pa.Field] | None,
    lock: Any,
    display: Any,
    record: RunRecord,
) -> RunTotals:
    """Run the Ray pipeline into parts (skipping rows a resumed run's checkpoint holds), then merge and publish;
    with a shared cache, the run's new entries are added to it before the output is published."""
    with _RowsCommitted(display, progress, read) as committed:
        record["resumed_from_rows"] = committed.rows_before
        _score_on_cluster(config, inputs, progress, resumed, cache, reserved, lambda: committed.stalled)
    _record_actors(config, progress, record)
    schemas = read.schemas
    label_columns = [f"{model.prefix}label" for model in config.scoring_models()]
    added = ray_dataset.added_fields(progress.parts, len(inputs.files), schemas) or fields
    if added is None:  # no row anywhere, and labels (--all-scores) this machine cannot read
        raise ScoringError(
            f"{config.input}: no input has a row to score, and the models' labels are not known here "
            "to name the --all-scores columns; score it without --all-scores"
        )
    counts = RunTotals()
    entries = None
    if cache is not None:
        from batchsent.cache.shared import EntryWriter

        entries = EntryWriter(cache, int(time.time()))
    staging = staging_folder(output)
    shutil.rmtree(staging, ignore_errors=True)  # what a run killed while publishing left (the lock is held)
    staging.mkdir(parents=True)
    try:
        written = []
        for index, (source, schema) in enumerate(zip(inputs.files, schemas, strict=True)):
            relative = inputs.relative(source) if inputs.many else Path(Path(str(output)).name)  # in its own format
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            expected = ray_dataset.read_row_count(progress.rows, index, str(source))
            ray_dataset.merge_parts(
                progress.parts, index, str(source), schema, added, label_columns, target, expected, counts, entries
            )
            written.append(relative)
        if entries is not None:
            _flush_entries(entries)
        lock.check()  # the output is still this run's to replace
        if inputs.many:
            _publish(staging, output, written)
        else:
            _publish_file(staging / written[0], output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def _flush_entries(entries: Any) -> None:
    from batchsent.cache.store import CacheError

    try:
        entries.flush()
    except OSError as error:
        raise CacheError(
            f"--cache {entries.cache.shown}: cannot write: {first_line(error)}; run the same command "
            "with --resume to try again"
        ) from None


SUCCESS_MARKER = "_SUCCESS"


def _publish_file(merged: Path, output: Path | str) -> None:
    """One input's output file: renamed into place, or uploaded in one PUT (whole or not at all)."""
    if isinstance(output, Path):
        publish(merged, output)
    else:
        upload(merged, remote(output, OutputError))


def _publish(staging: Path, output: Path | str, written: list[Path]) -> None:
    """A local folder appears whole (one rename). An object prefix cannot: its ``_SUCCESS`` object is removed
    first and written last, after every file is uploaded (as Spark's committers do), so a reader that waits for it
    never reads a partial set; objects an older output left under the prefix are deleted. A failed upload
    deletes what this run uploaded; a killed one leaves no ``_SUCCESS``, and its --resume publishes again."""
    if isinstance(output, Path):
        publish_folder(staging, output)
        return
    from pyarrow import fs

    marker = remote(f"{output}/{SUCCESS_MARKER}", OutputError)
    if marker.info(OutputError).type != fs.FileType.NotFound:
        marker.fs.delete_file(marker.path)
    prefix = remote(output + "/", OutputError)
    keep = {f"{prefix.path.rstrip('/')}/{relative.as_posix()}" for relative in written}
    listing = prefix.fs.get_file_info(fs.FileSelector(prefix.path.rstrip("/"), recursive=True, allow_not_found=True))
    uploaded = []
    try:
        for relative in written:
            location = remote(f"{output}/{relative.as_posix()}", OutputError)
            upload(staging / relative, location)
            uploaded.append(location)
        for stale in listing:
            if stale.type == fs.FileType.File and stale.path not in keep:
                prefix.fs.delete_file(stale.path)
        with marker.fs.open_output_stream(marker.path) as stream:
            stream.write(b"")
    except BaseException:
        for location in uploaded:
            with contextlib.suppress(Exception):
                location.fs.delete_file(location.path)
        raise


def _record_actors(config: JobConfig, progress: _Progress, record: RunRecord) -> None:
    """What the scoring actors ran, into the run record (labels in the model's order, device, dtype, variant,
    load time, as the local engine records them); an output two variants scored is refused (nodes whose
    --precision fast tunings differ, or a --resume on another machine)."""
    from batchsent.engine.ray.scoring import read_facts

    facts = read_facts(progress.actors)
    wanted = config.scoring_models()
    entries = []
    for index, model in enumerate(wanted):
        ran = {(fact["models"][index]["where"]): fact["models"][index] for fact in facts}
        if len(ran) > 1:
            raise ScoringError(
                f"the rows of {config.input} were scored as {' and as '.join(sorted(ran))} (nodes or "
                "runs that resolved the options differently); one output cannot mix them: run it "
                "again with --overwrite, with --precision exact or the same tuning on every node"
            )
        fact = next(iter(ran.values()), None)
        entries.append(
            {
                "name": model.name,
                "id": model.options.model,
                "labels": fact and fact["labels"],
                "device": fact and fact["device"],
                "dtype": fact and fact["dtype"],
                "variant": fact and fact["variant"],
                "where": fact and fact["where"],
                "model": record.get("fingerprint_models", [{}] * len(wanted))[index],
            }
        )
    record["models"] = entries
    record["load_seconds"] = max((fact["load_seconds"] for fact in facts), default=0.0)
    if wanted[0].name is None:
        lift_single_model(record, entries[0])


def _summary(config: JobConfig, output: Path | str, counts: RunTotals, started: float, record: RunRecord) -> RunSummary:
    """The run's summary from the totals counted while merging the parts (``build_summary``, as on the local engine)."""
    wanted = config.scoring_models()
    places = {entry.get("where") for entry in record.get("models") or []} - {None}
    where = f"ray, {config.workers} worker{'s' if config.workers > 1 else ''}" + (
        f", {places.pop()}" if len(places) == 1 else ""
    )
    if not counts.models:  # no rows merged: each model counted nothing
        counts.models = [ModelTotals() for _ in wanted]
    return build_summary(config, output, counts, time.monotonic() - started, record, [where] * len(wanted))


LIGHT_TASK_CPUS = 0.25  # reading and writing parts is mostly I/O: whole-CPU tasks would wait behind the scorers
CHECKPOINT_FILTER_CPUS = 1.0  # on --resume, Ray's checkpoint filter: a pool of one actor at Ray's default whole CPU


def actor_cpus_for(cpus: float, workers: int, resumed: bool) -> float:
    """The CPUs each model actor (and each tokenizing task) asks Ray for, so that with them a read task, a write
    task and, on --resume, Ray's checkpoint filter still fit the cluster: otherwise the reads wait for CPUs the
    actors hold and the run hangs. Fractions are Ray's bookkeeping; the actors' threads are set apart."""
    reserved = 2 * LIGHT_TASK_CPUS + (CHECKPOINT_FILTER_CPUS if resumed else 0.0)
    share = (cpus - reserved) / (workers + 1)
    if share < 0.01:
        raise UsageError(
            f"--workers {workers} on a Ray cluster of {cpus:g} CPUs: a read and a write task "
            + ("and, on --resume, Ray's checkpoint filter (a whole CPU) " if resumed else "")
            + f"need {reserved:g} of them besides the workers; give fewer --workers or a larger cluster"
        )
    return min(0.5, share)


def _score_on_cluster(
    config: JobConfig,
    inputs: InputFiles,
    progress: _Progress,
    resumed: bool,
    cache: Any,
    reserved: set[str],
    stalled: Callable[[], str | None],
) -> None:
    """Start (or join) Ray and run read -> score -> parts, with Ray Data's checkpointing keyed by row id."""
    import ray
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    # Failures come back from Ray as exceptions and leave as one line: Ray's own printed stack traces stay out.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # failures come back as exceptions, in one line
        with native_stderr_silenced(), _sigint_not_ignored():  # see _sigint_not_ignored
            ray.init(
                address=config.ray_address,
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
                logging_level=logging.ERROR,
            )
    previous = _interrupt_on_signals(stalled)  # after ray.init, which installs its own
    try:
        _quiet_ray_error_listener()
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # the run's own display counts committed rows (_RowsCommitted)
        filesystem, _root = filesystem_of(progress.checkpoint)
        context.checkpoint_config = CheckpointConfig(
            id_column=ray_dataset.ROW_ID,
            checkpoint_path=progress.checkpoint,
            delete_checkpoint_on_success=False,
            override_filesystem=filesystem,
        )
        # Its filter actors (on --resume) take a whole CPU each: one is enough, and more would starve the scorers.
        context.checkpoint_config.checkpoint_actor_pool_max_size = 1
        # Ray's worker processes have working folders of their own: local paths go to them absolute.
        files = [path if isinstance(path, str) else str(Path(path).resolve()) for path in inputs.files]
        source = ray_dataset.make_datasource(
            files, config.column, config.pair_column, config.chunk_rows, reserved, progress.rows
        )
        # One read task per file. Ray merges a task's output into blocks of up to 128 MiB (a small file is one
        # block), so the rows are cut again into blocks of --chunk-rows as they stream: every worker gets work,
        # and each block's part is committed as soon as it is scored (--resume loses at most the blocks in flight).
        dataset = ray.data.read_datasource(source, num_cpus=LIGHT_TASK_CPUS, override_num_blocks=len(files))
        dataset = dataset.repartition(target_num_rows_per_block=config.chunk_rows)
        # Ray 2.60's repartition takes no resources: its tasks ask for a whole CPU, which no node may have left
        # beside half-CPU actors (a cluster that lost a node hung so). Its logical operator's own remote args
        # make them light; a Ray that names them otherwise keeps its default.
        operator = getattr(getattr(dataset, "_logical_plan", None), "dag", None)
        remote_args = getattr(operator, "ray_remote_args", None)
        if isinstance(remote_args, dict):
            remote_args.setdefault("num_cpus", LIGHT_TASK_CPUS)
        with warnings.catch_warnings():  # "at-least-once": a row written twice is kept once when the parts merge
            warnings.filterwarnings("ignore", message="Checkpointing with non-file datasink")
            warnings.filterwarnings(
                "ignore", message="The minimum number of concurrent actors"
            )  # fewer files than --workers
            try:
                _scored_dataset(ray, dataset, config, cache, resumed, progress.actors).write_datasink(
                    ray_dataset.make_datasink(progress.parts), ray_remote_args={"num_cpus": LIGHT_TASK_CPUS}
                )
            except ray.exceptions.RayError as error:
                raise _worker_failure(error) from error
    finally:
        with contextlib.suppress(Exception):
            ray.data.DataContext.get_current().checkpoint_config = None
        if started_here:
            ray.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _RowsCommitted:
    """While Ray scores: the rows committed to the parts (each part's row count, from its footer, counted once)
    told to the run's display every PROGRESS_SECONDS, as the local engine tells its committed rows. Where the
    inputs do not say their rows (CSV), each file's bytes count as done in the share of its rows committed, once
    its read task has counted them."""

    def __init__(self, display: Any, progress: _Progress, read: InputsRead) -> None:
        self.display, self.progress, self.read = display, progress, read
        self._counted: dict[str, tuple[int, int]] = {}  # part path: (file index, rows)
        self._file_rows: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="batchsent-ray-progress", daemon=True)
        self._rows, self._changed, self.rows_before = -1, time.monotonic(), 0
        self.stalled: str | None = None  # why the run was stopped for making no progress

    def __enter__(self) -> Self:
        if self.display is not None:
            self.display.start(self.read.total_rows, self.read.total_bytes)
        with contextlib.suppress(Exception):  # what an interrupted run committed, for --resume's counts
            self._report()
        self.rows_before = max(self._rows, 0)
        self._changed = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.display is None:
            return
        if exc[0] is None:
            with contextlib.suppress(Exception):
                self._report()
        self.display.close()

    def _watch(self) -> None:
        limit = stall_seconds()
        while not self._stop.wait(PROGRESS_SECONDS):
            with contextlib.suppress(Exception):  # a listing that failed now is tried again
                self._report()
            if time.monotonic() - self._changed > limit:
                self.stalled = f"no row was committed for {limit:.0f} s: {_waiting_for()}; the run stopped"
                _thread.interrupt_main(signal.SIGTERM)  # the driver's handler raises ScoringError(self.stalled)
                return

    def _report(self) -> None:
        import pyarrow.parquet as pq
        from pyarrow import fs

        filesystem, root = filesystem_of(self.progress.parts)
        for info in filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True)):
            if info.type == fs.FileType.File and info.path.endswith(".parquet") and info.path not in self._counted:
                index = int(info.path.rsplit("/", 2)[-2])
                self._counted[info.path] = (index, pq.read_metadata(info.path, filesystem=filesystem).num_rows)
        per_file: dict[int, int] = {}
        for index, rows in self._counted.values():  # a part a retried task wrote again has the same name
            per_file[index] = per_file.get(index, 0) + rows
        total, sizes = self.read.total_rows, self.read.sizes
        rows = sum(per_file.values()) if total is None else min(sum(per_file.values()), total)
        if rows != self._rows:
            self._rows, self._changed = rows, time.monotonic()
        if self.display is None:
            return
        done = 0
        for index, committed in per_file.items():
            if index not in self._file_rows:
                with contextlib.suppress(ScoringError):
                    self._file_rows[index] = ray_dataset.read_row_count(self.progress.rows, index, "")
            counted = self._file_rows.get(index)
            if counted is not None:
                done += round(sizes[index] * min(committed / counted, 1.0)) if counted else sizes[index]
        self.display.advance(rows, done)


PROGRESS_SECONDS = 1.0
STALL_SECONDS = 900.0  # a run that commits no row for this long is stopped: a nightly job must end


def stall_seconds() -> float:
    """STALL_SECONDS, or $BATCHSENT_RAY_STALL_SECONDS (a cluster whose models take longer to load, and tests)."""
    try:
        return max(float(os.environ.get("BATCHSENT_RAY_STALL_SECONDS", STALL_SECONDS)), 1.0)
    except ValueError:
        return STALL_SECONDS


def _waiting_for() -> str:
    """What the cluster holds free, for the stall message: Ray's tasks wait for CPUs or GPUs the actors hold."""
    import ray

    try:
        total, free = ray.cluster_resources(), ray.available_resources()
    except Exception:
        return "the Ray cluster does not answer"
    parts = [f"{free.get(name, 0):g} of {total[name]:g} {name}s free" for name in ("CPU", "GPU") if total.get(name)]
    return "Ray's tasks are waiting (" + ", ".join(parts) + "); give fewer --workers, or check the cluster"


@contextlib.contextmanager
def _sigint_not_ignored() -> Iterator[None]:
    """While Ray starts its processes here: SIGINT handled, not ignored.

    A command started in the background (``batchsent ... &`` in a script, ``nohup``) inherits SIGINT ignored, and
    an ignored signal stays ignored across exec, so Ray's workers would start with it too. Ray (2.60) defers SIGINT
    in a task it cancels and then calls the disposition it saved as a handler: the ignored one is not callable,
    so a run stopped by SIGTERM printed "TypeError: 'Handlers' object is not callable" from a write task. A Python
    handler resets to the default at exec, so with one in place the workers start with Python's own. The driver's
    own disposition is restored afterwards."""
    main = threading.current_thread() is threading.main_thread()
    ignored = main and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupt_on_signals(stalled: Callable[[], str | None]) -> dict[int, Any]:
    """SIGTERM and SIGINT stop a Ray run as they stop the local engine: the driver's wait ends with Interrupted
    (exit 143 or 130, one line), Ray is shut down, and the parts scored so far stay for --resume. (Ray's own
    handling would abort the driver with a native stack dump, exit 134.) A stall (``stalled()`` says why) ends
    the same way as a ScoringError. The handlers it replaced are returned."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(signum: int, frame: Any) -> None:
        reason = stalled()
        if reason:
            raise ScoringError(reason)
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum)

    return {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}


def _worker_failure(error: BaseException) -> BatchsentError:
    """A Ray task or actor failure as batchsent's own error: the worker's BatchsentError as it was raised
    (a bad input line, a node that cannot load the model), anything else as a scoring failure in one line."""
    from ray.exceptions import RayError

    from batchsent import errors

    # Ray re-raises a worker's error as a class that is both its RayTaskError and the error's own class, with Ray's
    # header as its text: the error itself is its ``cause``.
    cause: BaseException | None = error
    seen: set[int] = set()
    while (
        cause is not None
        and id(cause) not in seen
        and (not isinstance(cause, BatchsentError) or isinstance(cause, RayError))
    ):
        seen.add(id(cause))
        cause = getattr(cause, "cause", None) or cause.__cause__
    if isinstance(cause, BatchsentError) and id(cause) not in seen:  # the loop stopped at the worker's own error
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


def _scored_dataset(ray: Any, dataset: Any, config: JobConfig, cache: Any, resumed: bool, facts: str) -> Any:
    """The input dataset through the tokenizing tasks (``prepare_block``) and the RayScorer actors (fractional
    CPUs: 2-core machines do not starve); with a shared cache, the actors' model keys are learnt first by one
    task with their resources."""
    from batchsent.engine.ray.scoring import RayScorer, cache_keys, prepare_block

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actor_cpus = actor_cpus_for(cpus, config.workers, resumed)
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
    prepared = dataset.map_batches(
        prepare_block,
        fn_kwargs={
            "models": models,
            "column": config.column,
            "pair_column": config.pair_column,
            "cache": location,
            "keys": keys,
            "run": None if cache is None else cache.run,
        },
        batch_format="pyarrow",
        batch_size=config.chunk_rows,
        num_cpus=actor_cpus,
    )
    return prepared.map_batches(
        RayScorer,
        fn_constructor_kwargs={
            "models": models,
            "column": config.column,
            "all_scores": config.all_scores,
            "cache": location,
            "keys": keys,
            "pair_column": config.pair_column,
            "facts": facts,
        },
        batch_format="pyarrow",
        batch_size=config.chunk_rows,
        compute=ray.data.ActorPoolStrategy(size=config.workers),
        num_cpus=actor_cpus,
        num_gpus=config.gpus_per_worker or None,
    )
