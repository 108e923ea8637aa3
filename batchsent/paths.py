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

from dataclasses import dataclass
from pathlib import Path

from .checkpoint import Checkpoint
from .errors import BatchsentError, UsageError
from .lock import lock_path
from .options import JobConfig
from .sources import expand, names_many
from .storage import is_url

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Claim:
    """A path a run writes (or reads, for inputs), under the option that names it; a ``folder`` owns what is inside."""

    role: str
    path: Path
    folder: bool = False

    @property
    def resolved(self) -> Path:
        return self.path.expanduser().resolve()

    def shown(self) -> str:
        return f"{self.role} {self.path}"


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


def _output_claims(config: JobConfig) -> list[Claim]:
    """What the output part of a run writes on this machine (nothing for an object-storage output)."""
    if config.engine == "ray":
        from .ray_engine import output_folder

        folder = output_folder(config)
        if isinstance(folder, str):  # an object prefix: its parts and progress are objects too
            return []
        progress = folder.parent / f".{folder.name}.batchsent-ray"
        return [Claim("--output", folder, folder=True), Claim("--output's lock", lock_path(folder)),
                Claim("--output's Ray progress folder", progress, folder=True)]  # fmt: skip
    if names_many(config.input):
        if config.output is None or is_url(config.output):
            return []  # the default <folder>.scored is beside the input folder; folders.py checks it
        folder = Path(config.output)
        finished = folder.parent / f".{folder.name}.batchsent-files.json"
        return [Claim("--output", folder, folder=True), Claim("--output's list of finished files", finished),
                Claim("--output's lock", lock_path(folder))]  # fmt: skip
    output = config.output_path
    if is_url(output):
        return []
    assert isinstance(output, Path)
    return [Claim("--output", output), Claim("--output's progress folder", Checkpoint(output).directory, folder=True),
            Claim("--output's lock", lock_path(output))]  # fmt: skip


def written_claims(config: JobConfig) -> list[Claim]:
    """Every local path a run of ``config`` writes, under the option that names it."""
    claims = _output_claims(config)
    for role, path in (("--manifest", config.manifest), ("--report", config.report)):
        if path is not None:
            claims.append(Claim(role, Path(path)))
    if config.cache is not None and not is_url(config.cache):
        cache = Path(config.cache)
        if config.engine == "ray":  # a shared cache: a folder of its own
            claims.append(Claim("--cache", cache, folder=True))
        else:
            claims.append(Claim("--cache", cache))
            claims += [Claim(f"--cache's {suffix} file", cache.with_name(cache.name + suffix)) for suffix in SQLITE_COMPANIONS]
    return claims


def read_claims(config: JobConfig) -> list[Claim]:
    """The local files a run reads (every file of a folder or glob) and the local model folders it loads."""
    claims: list[Claim] = []
    if not is_url(config.input):
        if names_many(config.input):
            try:
                files = expand(config.input).files
            except BatchsentError:
                files = []  # an empty or mixed folder: the engine reports it (and records it in the manifest)
            claims += [Claim("the input file", Path(path)) for path in files]
        else:
            claims.append(Claim("the input file", Path(config.input)))
    for model in config.scoring_models():
        folder = Path(model.options.model).expanduser()
        if folder.is_dir():
            claims.append(Claim("the model folder", folder, folder=True))
    return claims


def check_distinct_paths(config: JobConfig) -> None:
    """Refuse (UsageError, exit 2) a run that would write one path twice, over an input, or into a folder it reads."""
    written = written_claims(config)
    for index, claim in enumerate(written):
        for other in written[index + 1 :]:
            if _same(claim, other):
                raise UsageError(f"{claim.shown()} is also {other.shown()}: every path a run writes must differ from "
                                 "every other; choose another path")  # fmt: skip
            for inner, outer in ((claim, other), (other, claim)):
                if _inside(inner, outer):
                    raise UsageError(f"{inner.shown()} lies inside {outer.shown()}, which the run owns; choose a path "
                                     "outside it")  # fmt: skip
    reads = read_claims(config)
    for claim in written:
        for source in reads:
            if _same(claim, source) and not source.folder:
                raise UsageError(f"{claim.shown()} is {source.role} {source.path}: a run never writes over its input; "
                                 "choose another path")  # fmt: skip
            if _inside(claim, source) and source.role == "the model folder":
                raise UsageError(f"{claim.shown()} lies inside {source.role} {source.path}: a run never writes into a "
                                 "model it loads; choose another path")  # fmt: skip
            if claim.role == "--cache" and _inside(source, claim):  # a Ray run's cache folder holds no input
                raise UsageError(f"{source.role} {source.path} lies inside {claim.shown()}, which the run owns; choose "
                                 "a path outside it")  # fmt: skip
    if config.cache is not None and config.engine == "ray" and not is_url(config.cache) and not is_url(config.input):
        cache, source = Path(config.cache).expanduser().resolve(), Path(config.input).expanduser().resolve()
        if source.is_dir() and cache.is_relative_to(source):
            raise UsageError(f"--cache {config.cache} lies inside the input folder {config.input}: its files would be "
                             "read as input the next night; choose a path outside it")  # fmt: skip
