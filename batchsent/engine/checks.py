"""The input and column checks every engine makes before a model loads: the output path, reserved prediction
columns, and columns two models would both write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from batchsent.data import formats, readers
from batchsent.data.storage import is_url
from batchsent.errors import InputError, OutputError, UsageError
from batchsent.model.postprocess import column_names
from batchsent.settings.options import JobConfig, ScoringModel
from batchsent.state.checkpoint import Checkpoint

if TYPE_CHECKING:
    pass


def check_output(config: JobConfig) -> Path:
    """The output path, refused when it is the input, exists (without overwrite) or cannot be made."""
    output = config.output_path
    formats.check_output_format(config.input, output)
    assert isinstance(output, Path), "an object-storage output is staged locally by runner.run"
    local_input = not is_url(config.input)
    if local_input and (
        output.resolve() == Path(config.input).resolve() or (output.exists() and os.path.samefile(output, config.input))
    ):
        raise OutputError(f"{output}: the output would replace the input; choose another --output")
    if output.is_dir():
        raise OutputError(f"{output}: is a directory")
    resuming = config.resume and Checkpoint(output).exists()  # killed between the rename and the clean-up
    if output.exists() and not config.overwrite and not resuming:
        raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(f"{output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: cannot write in {parent} (permission denied)")
    return output


def check_new_columns(names: list[str], schema: pa.Schema, path: Path | str, several: bool = False) -> None:
    """Refuse an input that already holds a column the job would add."""
    taken = [name for name in names if name in schema.names]
    if taken:
        remedy = "another NAME in --model NAME=MODEL" if several else "another --prefix"
        raise InputError(f"{path}: already has column(s) {', '.join(map(repr, taken))}; choose {remedy}")


def check_reader(config: JobConfig, reader: readers.Reader, path: Path | str) -> tuple[int, int | None]:
    """An opened input's columns, on every engine: the text column (and the pair column) exist and hold text, and
    no prediction column the run adds is there already. Returns the text and pair column indexes."""
    column = reader.text_column(config.column)
    pair = None if config.pair_column is None else reader.text_column(config.pair_column, "--pair-column")
    check_input_columns(config, reader.schema, path)
    return column, pair


def check_input_columns(config: JobConfig, schema: pa.Schema, path: Path | str) -> None:
    """Before any model loads: every model's label and score columns (known without the model) are new to the input."""
    models = config.scoring_models()
    names = [
        name for model in models for name in column_names([], model.prefix, False, model.options.long_text == "chunk")
    ]
    check_new_columns(names, schema, path, models[0].name is not None)


def check_model_columns(names: list[list[str]], models: list[ScoringModel]) -> None:
    """Refuse models whose columns would collide (a name like ``a_score`` beside a model ``a`` with --all-scores)."""
    owner: dict[str, str | None] = {}
    for model, columns in zip(models, names, strict=True):
        for name in columns:
            if name in owner and owner[name] == model.name:
                whose = f"model {model.name}" if model.name else "the model"
                raise UsageError(
                    f"{whose} gives two of its classes one name, so it would write the column {name!r} "
                    "twice; score without --all-scores, or name its classes apart (id2label in its "
                    "config.json)"
                )
            if name in owner:
                raise UsageError(
                    f"models {owner[name]} and {model.name} would both write the column {name!r}; rename one of them"
                )
            owner[name] = model.name
