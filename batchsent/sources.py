"""What INPUT names: one file, or a folder or glob of files of one format, with their relative names.

A folder is read recursively; hidden files and folders (batchsent's own progress and lock
files, editors' swap files) and files of other types (Spark's ``_SUCCESS``, ``.crc``) are
left out. A glob takes what it matches (``**`` recurses); a matched file of an unknown
type is refused. Both engines use this.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from . import io
from .errors import InputError

GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class InputFiles:
    """The files INPUT names, sorted, and the folder their relative names start from."""

    spec: str
    root: Path
    files: list[Path]
    many: bool  # a folder or a glob (then the output is a folder too)
    format: str

    def relative(self, path: Path) -> Path:
        return path.relative_to(self.root) if self.many else Path(path.name)


def names_many(spec: str | Path) -> bool:
    """Whether INPUT is a folder or a glob rather than one file."""
    text = str(spec)
    path = Path(text).expanduser()
    return path.is_dir() or (not path.exists() and any(ch in text for ch in GLOB_CHARACTERS))


def _glob_root(spec: str) -> Path:
    """The folder part of a glob before its first wildcard: ``exports/2026-*/part-*.csv`` -> ``exports``."""
    fixed: list[str] = []
    for part in Path(spec).expanduser().parts:
        if any(ch in part for ch in GLOB_CHARACTERS):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _known_type(path: Path) -> bool:
    try:
        io.file_format(path)
    except InputError:
        return False
    return True


def expand(spec: str | Path) -> InputFiles:
    """The files of INPUT; an empty match or a mix of formats is an InputError (exit 2)."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        root = path
        files = sorted(p for p in path.rglob("*") if p.is_file() and _visible(p, root) and _known_type(p))
        if not files:
            raise InputError(f"{text}: no CSV, TSV, JSON Lines or Parquet files in this folder")
    elif names_many(text):
        root = _glob_root(text)
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"{text}: matches no files")
    else:
        return InputFiles(text, path.parent, [path], False, io.file_format(path))
    formats = {io.file_format(p) for p in files}
    if len(formats) > 1:
        raise InputError(f"{text}: mixes {' and '.join(sorted(formats))} files; give one format at a time")
    return InputFiles(text, root, files, True, formats.pop())
