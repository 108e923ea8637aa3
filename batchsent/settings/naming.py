"""The path rule: every path a run writes differs from every other one and from every input.

A run writes its output (and beside it a progress folder and a lock file), a manifest, a
report and a cache file (with SQLite's ``-wal``, ``-shm`` and ``-journal`` files beside
it); a folder run writes an output folder and its list of finished files. Any two of
these that name the same file, one that lies inside a folder another one owns, or one
that names an input file or lies inside a local model folder, would destroy data: the
run is refused in one line before anything loads. Paths are compared resolved (symbolic
links and ``./`` followed), and existing files also by device and inode (hard links).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from batchsent.data.sources import InputFiles, expand, names_many
from batchsent.data.storage import is_url
from batchsent.errors import BatchsentError, OutputError, UsageError, first_line
from batchsent.settings.options import JobConfig
from batchsent.state.checkpoint import Checkpoint
from batchsent.state.lock import lock_path

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def finished_list(folder: Path) -> Path:
    """A local folder run's list of finished files, beside its output folder until the run completes."""
    return folder.parent / f".{folder.name}.batchsent-files.json"


def default_output_folder(inputs: InputFiles) -> Path:
    """``<folder>.scored`` beside a folder; for a glob, ``<the glob's folder>.scored``."""
    if isinstance(inputs.root, str):
        raise OutputError(
            f"{inputs.spec}: a folder or glob on object storage needs --output FOLDER (a local folder or a URL prefix)"
        )
    root = inputs.root.resolve() if inputs.root != Path(".") else Path.cwd()
    return root.with_name(f"{root.name}.scored")


def output_location(config: JobConfig) -> Path | str:
    """Where a Ray run writes, named as the local engine names it: one input file to one output file
    (``JobConfig.output_path``); a folder, glob or prefix to an output folder or prefix (--output, or
    ``<folder>.scored`` beside a local folder or a glob's folder)."""
    if not names_many(config.input):
        return config.output_path
    if config.output is not None:
        return str(config.output).rstrip("/") if is_url(config.output) else Path(config.output).expanduser()
    if is_url(config.input):
        raise UsageError(
            "--engine ray with an object-storage folder or glob needs --output (a local folder or a URL prefix)"
        )
    return default_output_folder(expand(str(config.input)))


def ray_progress_location(output: Path | str) -> str:
    """Beside the output, kept until the run is published: its parts, Ray's checkpoint and what the run was."""
    text = str(output).rstrip("/")
    parent, _, name = text.rpartition("/")
    return f"{parent or '.'}/.{name}.batchsent-ray"


def staging_folder(output: Path | str) -> Path:
    """Where the merged outputs wait to be published: beside a local output folder, or in the temp folder for an
    object prefix, under a name fixed by the output, so the next run for it removes what a killed run left."""
    if isinstance(output, Path):
        return output.parent / f".{output.name}.batchsent-staging"
    return Path(tempfile.gettempdir()) / f"batchsent-staging-{hashlib.sha256(output.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Claim:
    """A path a run writes (or reads, for inputs), under the option that names it; a ``folder`` owns what is inside."""

    role: str
    path: Path
    folder: bool = False
    per_file: bool = False  # one file's output (and what goes with it) in a folder run: checked against inputs only

    @property
    def resolved(self) -> Path:
        try:
            return self.path.expanduser().resolve()
        except (RuntimeError, OSError) as error:  # Python 3.11 raises RuntimeError for a loop of symbolic links
            raise UsageError(f"{self.role} {self.path}: cannot be followed ({first_line(error)})") from None

    def shown(self) -> str:
        return f"{self.path} ({self.role})" if self.per_file else f"{self.role} {self.path}"


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _same(first: Claim, second: Claim) -> bool:
    if first.resolved == second.resolved:
        return True
    one, other = _file_identity(first.path), _file_identity(second.path)
    return one is not None and one == other


def _inside(claim: Claim, folder: Claim) -> bool:
    return folder.folder and claim.resolved != folder.resolved and claim.resolved.is_relative_to(folder.resolved)


def _output_folder(config: JobConfig, inputs: InputFiles | None) -> Path | None:
    """The local folder a folder or glob run writes into; None for an object prefix."""
    if config.engine == "ray":
        folder = output_location(config)
        return None if isinstance(folder, str) else folder
    if config.output is not None:
        return None if is_url(config.output) else Path(config.output).expanduser()
    if inputs is None or not isinstance(inputs.root, Path):
        return None  # an object-storage input needs --output, which the folder engine asks for
    return default_output_folder(inputs)


def _output_claims(config: JobConfig, inputs: InputFiles | None) -> list[Claim]:
    """What the output part of a run writes on this machine (nothing for an object-storage output); for a
    folder, glob or Ray run, every file's output (and, on the local engine, its progress folder and lock) too."""
    if not names_many(config.input):  # one output file, on either engine (Ray's progress and staging beside it)
        output = config.output_path
        if is_url(output):
            return []
        assert isinstance(output, Path)
        if config.engine == "ray":
            return [
                Claim("--output", output),
                Claim("--output's lock", lock_path(output)),
                Claim("--output's Ray progress folder", Path(ray_progress_location(output)), folder=True),
                Claim("--output's staging folder", staging_folder(output), folder=True),
            ]
        return [
            Claim("--output", output),
            Claim("--output's progress folder", Checkpoint(output).directory, folder=True),
            Claim("--output's lock", lock_path(output)),
        ]
    folder = _output_folder(config, inputs)
    if folder is None:
        return []
    if config.engine == "ray":
        progress = Path(ray_progress_location(folder))
        claims = [
            Claim("--output", folder, folder=True),
            Claim("--output's lock", lock_path(folder)),
            Claim("--output's Ray progress folder", progress, folder=True),
            Claim("--output's staging folder", staging_folder(folder), folder=True),
        ]
    else:
        finished = finished_list(folder)
        claims = [
            Claim("--output", folder, folder=True),
            Claim("--output's list of finished files", finished),
            Claim("--output's lock", lock_path(folder)),
        ]
    for source in inputs.files if inputs is not None else ():
        target = folder / inputs.relative(source)  # type: ignore[union-attr]
        claims.append(Claim(f"the output of {source}", target, per_file=True))
        if config.engine != "ray":
            claims += [
                Claim(f"the progress folder of {source}", Checkpoint(target).directory, folder=True, per_file=True),
                Claim(f"the lock of {source}", lock_path(target), per_file=True),
            ]
    return claims


def _inputs(config: JobConfig) -> InputFiles | None:
    """The local files INPUT names (None for object storage, or a folder the engine reports as empty or mixed)."""
    if is_url(config.input):
        return None
    try:
        return expand(config.input)
    except BatchsentError:
        return None  # an empty or mixed folder: the engine reports it (and records it in the manifest)


def written_claims(config: JobConfig, inputs: InputFiles | None = None) -> list[Claim]:
    """Every local path a run of ``config`` writes, under the option that names it."""
    claims = _output_claims(config, inputs)
    for role, path in (("--manifest", config.manifest), ("--report", config.report)):
        if path is not None:
            claims.append(Claim(role, Path(path)))
    if config.cache is not None and not is_url(config.cache):
        cache = Path(config.cache)
        if config.engine == "ray":  # a shared cache: a folder of its own
            claims.append(Claim("--cache", cache, folder=True))
        else:
            claims.append(Claim("--cache", cache))
            claims += [
                Claim(f"--cache's {suffix} file", cache.with_name(cache.name + suffix)) for suffix in SQLITE_COMPANIONS
            ]
    return claims


def read_claims(config: JobConfig, inputs: InputFiles | None = None) -> list[Claim]:
    """The local files a run reads (every file of a folder or glob) and the local model folders it loads."""
    claims: list[Claim] = []
    if not is_url(config.input):
        if names_many(config.input):
            claims += [Claim("the input file", Path(path)) for path in (inputs.files if inputs is not None else ())]
        else:
            claims.append(Claim("the input file", Path(config.input)))
    for model in config.scoring_models():
        folder = Path(model.options.model).expanduser()
        if folder.is_dir():
            claims.append(Claim("the model folder", folder, folder=True))
    return claims


def check_distinct_paths(config: JobConfig) -> None:
    """Refuse (UsageError, exit 2) a run that would write one path twice, over an input, into a folder it reads
    (the input folder, whose next run would read the output, or a model folder)."""
    inputs = _inputs(config) if names_many(config.input) or config.engine == "ray" else None
    claims = written_claims(config, inputs)
    written = [claim for claim in claims if not claim.per_file]
    for index, claim in enumerate(written):
        for other in written[index + 1 :]:
            if _same(claim, other):
                raise UsageError(
                    f"{claim.shown()} is also {other.shown()}: every path a run writes must differ from "
                    "every other; choose another path"
                )
            for inner, outer in ((claim, other), (other, claim)):
                if _inside(inner, outer):
                    raise UsageError(
                        f"{inner.shown()} lies inside {outer.shown()}, which the run owns; choose a path outside it"
                    )
    _check_input_folder(config, inputs, written)  # -o the input folder: said of the folder, not of each file in it
    reads = read_claims(config, inputs)
    models = [source for source in reads if source.folder]
    files = [source for source in reads if not source.folder]
    by_path = {source.resolved: source for source in files}
    by_identity = {identity: source for source in files if (identity := _file_identity(source.path)) is not None}
    for claim in claims:
        identity = _file_identity(claim.path)
        source = by_path.get(claim.resolved) or (by_identity.get(identity) if identity is not None else None)
        if source is not None:
            raise UsageError(
                f"{claim.shown()} is {source.role} {source.path}: a run never writes over its input; "
                "choose another path"
            )
        for model in models:
            if _inside(claim, model):
                raise UsageError(
                    f"{claim.shown()} lies inside {model.role} {model.path}: a run never writes into a "
                    "model it loads; choose another path"
                )
        for source in reads if claim.role == "--cache" else ():  # a Ray run's cache folder holds no input
            if _inside(source, claim):
                raise UsageError(
                    f"{source.role} {source.path} lies inside {claim.shown()}, which the run owns; choose "
                    "a path outside it"
                )
    _check_input_folder(config, inputs, [claim for claim in claims if claim.per_file])


def _check_input_folder(config: JobConfig, inputs: InputFiles | None, claims: list[Claim]) -> None:
    """Nothing a run writes beside its outputs lands inside the input folder: the next run would read it (a Ray
    run's cache folder included)."""
    if inputs is None or not inputs.many or not isinstance(inputs.root, Path):
        return
    root = Path(os.path.abspath(inputs.root.expanduser())).resolve()
    for claim in claims:
        if not (
            claim.role.startswith(("--output", "the output of", "the progress folder", "the lock of"))
            or (claim.role == "--cache" and config.engine == "ray")
        ):
            continue
        if claim.resolved == root or claim.resolved.is_relative_to(root):
            if claim.role == "--cache":
                raise UsageError(
                    f"{claim.shown()} lies inside the input folder {inputs.root}: its files would be read "
                    "as input the next night; choose a path outside it"
                )
            raise UsageError(
                f"{claim.shown()} lies inside the input folder {inputs.root}: the next run would read it "
                "as input; choose an --output folder outside it"
            )
