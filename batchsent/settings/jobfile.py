"""Job files and the merge of defaults < ``BATCHSENT_MODEL`` < TOML job file < flags into a JobConfig.

The built-in default model is the seed's Hub id; ``BATCHSENT_MODEL`` replaces that
default, a ``--config`` TOML job file overrides both, and command-line flags override
the file. A job file takes every JobConfig field, with ``-`` or ``_`` in its keys.
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchsent.data.storage import check_location, is_url
from batchsent.errors import UsageError
from batchsent.settings.options import PER_MODEL_KEYS, JobConfig, ModelSpec

MODEL_ENV = "BATCHSENT_MODEL"


def _key_types() -> dict[str, tuple[type, ...]]:
    """The TOML types each JobConfig field accepts, from its annotation (paths are strings)."""
    accepted: dict[str, tuple[type, ...]] = {}
    for name, hint in typing.get_type_hints(JobConfig).items():
        kinds = set(typing.get_args(hint)) or {hint}
        if Path in kinds:
            accepted[name] = (str,)
        elif float in kinds:
            accepted[name] = (float, int)
        else:
            accepted[name] = tuple(kind for kind in (bool, int, str) if kind in kinds)
    return accepted


_KEY_TYPES = _key_types()
_KEY_TYPES["models"] = (list,)
_PATH_KEYS = {
    name for name, hint in typing.get_type_hints(JobConfig).items() if Path in (typing.get_args(hint) or (hint,))
}


def read_job_file(path: Path) -> dict[str, Any]:
    """Options from a TOML job file; relative paths in it are taken from the file's folder."""
    try:
        with open(path, "rb") as stream:
            raw = tomllib.load(stream)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except UnicodeDecodeError as error:
        raise UsageError(
            f"--config {path}: not a UTF-8 text file (byte {error.start + 1} is 0x{error.object[error.start]:02x}); "
            "a job file is TOML"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"--config {path}: {error}") from error
    options: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        expected = _KEY_TYPES.get(name)
        if expected is None:
            known = ", ".join(sorted(k.replace("_", "-") for k in _KEY_TYPES))
            raise UsageError(f"--config {path}: unknown key {key!r}; known keys: {known}")
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            raise UsageError(f"--config {path}: {key} must be {expected[0].__name__}, got {value!r}")
        if name in _PATH_KEYS and not is_url(value):
            check_location(key, value)
            value = path.parent / Path(str(value)).expanduser()
        options[name] = _model_tables(path, value) if name == "models" else value
    return options


def _model_tables(path: Path, tables: list[Any]) -> tuple[ModelSpec, ...]:
    """``[[models]]`` tables: ``name``, ``model`` (as the ``model`` key: a Hub id or a path) and per-model options."""
    specs = []
    for table in tables:
        if (
            not isinstance(table, dict)
            or not isinstance(table.get("name"), str)
            or not isinstance(table.get("model"), str)
        ):
            raise UsageError(f'--config {path}: each [[models]] table needs name = "..." and model = "..."')
        options = {}
        for key, value in table.items():
            name = key.replace("-", "_")
            if name in ("name", "model"):
                continue
            if name not in PER_MODEL_KEYS:
                known = ", ".join(sorted(k.replace("_", "-") for k in PER_MODEL_KEYS if k != "model"))
                raise UsageError(
                    f"--config {path}: [[models]] {table['name']}: unknown key {key!r}; known keys: "
                    f"name, model, {known}"
                )
            expected = _KEY_TYPES[name]
            if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
                raise UsageError(
                    f"--config {path}: [[models]] {table['name']}: {key} must be {expected[0].__name__}, got {value!r}"
                )
            options[name] = value
        specs.append(ModelSpec(table["name"], table["model"], tuple(sorted(options.items()))))
    return tuple(specs)


def _model_flags(values: list[str]) -> dict[str, Any]:
    """``--model`` given once as MODEL (a single-model run), or as NAME=MODEL one or more times."""
    specs = [ModelSpec.parse(value) for value in values]
    if len(values) == 1 and specs[0] is None:
        return {"model": values[0], "models": ()}
    if None in specs:
        raise UsageError(
            "--model: give one MODEL, or NAME=MODEL for each of several models (NAME prefixes its columns)"
        )
    return {"models": tuple(specs)}


def build_config(
    flags: Mapping[str, Any], job_file: Path | None = None, environ: Mapping[str, str] = os.environ
) -> JobConfig:
    """Merge defaults, ``BATCHSENT_MODEL``, the job file and flags (None = not given) into a validated JobConfig."""
    options: dict[str, Any] = {}
    if environ.get(MODEL_ENV):
        options["model"] = environ[MODEL_ENV]
    if job_file is not None:
        options.update(read_job_file(job_file))
    given = {key: value for key, value in flags.items() if value is not None}
    if isinstance(given.get("model"), list):
        given.update(_model_flags(given.pop("model")) if given["model"] else {})
    options.update(given)
    if options.get("input") is None:
        raise UsageError("no INPUT file given (as an argument, or as input = ... in --config)")
    for name in _PATH_KEYS & options.keys():
        if not is_url(options[name]):
            check_location("INPUT" if name == "input" else f"--{name}", options[name])
            options[name] = Path(options[name])
    return JobConfig(**options)
