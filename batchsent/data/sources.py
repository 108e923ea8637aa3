"""What INPUT names: one file, or a folder or glob of files of one format, with their relative names.

A folder is read recursively; hidden files and folders (batchsent's own progress and lock
files, editors' swap files) and files of other types (Spark's ``_SUCCESS``, ``.crc``) are
left out. A glob takes what it matches (``**`` recurses); a matched file of an unknown
type is refused. Both engines use this.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from batchsent.data import formats
from batchsent.data.storage import is_url, remote
from batchsent.errors import InputError, first_line
from batchsent.state.identity import input_fingerprint

GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class InputFiles:
    """The files INPUT names, sorted, and the folder their relative names start from.

    On object storage the files are URLs and ``root`` the URL prefix they share.
    """

    spec: str
    root: Path | str
    files: list[Path | str]
    many: bool  # a folder or a glob (then the output is a folder too)
    format: str

    def relative(self, path: Path | str) -> Path:
        if isinstance(path, str):
            return Path(path[len(str(self.root).rstrip("/")) + 1 :] if self.many else formats.base_name(path))
        return path.relative_to(self.root) if self.many else Path(path.name)

    def size(self, path: Path | str) -> int:
        return int(input_fingerprint(path)["size"]) if isinstance(path, str) else path.stat().st_size


def names_many(spec: str | Path) -> bool:
    """Whether INPUT is a folder or a glob rather than one file (on object storage: ends in / or has a wildcard)."""
    text = str(spec)
    if is_url(text):
        return text.endswith("/") or any(ch in text for ch in GLOB_CHARACTERS)
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


def _glob_files(text: str, root: Path) -> list[Path]:
    """The files a local glob matches, sorted. As in the folder form, symbolic links to folders are not
    followed (``**`` does not descend into them, and no match may pass through one), so a link loop
    cannot repeat the tree; hidden names match only a pattern part that starts with a dot."""
    rest = Path(text).expanduser().parts[len(root.parts) :]
    pattern = "/".join(rest) + ("/*" if rest[-1] == "**" else "")
    explicit_hidden = any(part.startswith(".") for part in rest)
    files = []
    for match in root.glob(pattern):
        relative = match.relative_to(root)
        through = [root.joinpath(*relative.parts[:depth]) for depth in range(1, len(relative.parts))]
        if any(folder.is_symlink() for folder in through) or not match.is_file():
            continue
        if explicit_hidden or _visible(str(relative)):
            files.append(match)
    return sorted(files)


def _visible(relative: str) -> bool:
    """No hidden file or folder on the way from the root (``a/.staging/b.csv`` is hidden)."""
    return not any(part.startswith(".") for part in Path(relative).parts)


def _known_type(path: Path) -> bool:
    try:
        formats.file_format(path)
    except InputError:
        return False
    return True


def is_prefix(url: str) -> bool:
    """Whether an object URL names a prefix (a folder run's output, written without its trailing /) rather
    than one object: it ends in /, holds a wildcard, or its name is no file type batchsent reads."""
    return names_many(url) or not _known_type(Path(formats.base_name(url)))


def _expand_url(text: str) -> InputFiles:
    """The objects under a URL prefix (``s3://bucket/exports/``) or matching a URL glob, listed recursively."""
    from pyarrow import fs

    if not names_many(text):
        return InputFiles(text, text.rpartition("/")[0], [text], False, formats.file_format(text))
    wildcard = next((i for i, ch in enumerate(text) if ch in GLOB_CHARACTERS), None)
    prefix = text if wildcard is None else text[: text.rfind("/", 0, wildcard) + 1]
    location = remote(prefix.rstrip("/") + "/")
    try:
        listed = location.fs.get_file_info(
            fs.FileSelector(location.path.rstrip("/"), recursive=True, allow_not_found=True)
        )
    except OSError as error:
        raise InputError(f"{text}: {first_line(error)}") from error
    base = prefix.rstrip("/")
    urls = sorted(
        f"{base}/{info.path[len(location.path.rstrip('/')) + 1 :]}" for info in listed if info.type == fs.FileType.File
    )
    if wildcard is None:
        urls = [u for u in urls if _visible(u[len(base) + 1 :]) and _known_type(Path(formats.base_name(u)))]
        if not urls:
            raise InputError(f"{text}: no CSV, TSV, JSON Lines or Parquet objects under this prefix")
    else:
        pattern = text[len(base) + 1 :]
        explicit_hidden = any(part.startswith(".") for part in pattern.split("/"))
        urls = [
            u
            for u in urls
            if glob_matches(u[len(base) + 1 :], pattern) and (explicit_hidden or _visible(u[len(base) + 1 :]))
        ]
        if not urls:
            raise InputError(f"{text}: matches no objects")
    return _checked(text, base, urls)


def glob_matches(relative: str, pattern: str) -> bool:
    """Whether ``relative`` (``a/b.csv``) matches ``pattern`` as a local glob (pathlib's) matches it: each part of
    the pattern matches one part of the path, so ``*`` never crosses a ``/``; ``**`` matches any number of parts,
    and a trailing ``**`` every file below. Object-storage globs use it, so a job file selects the same files
    when its data moves to a bucket."""
    wanted = pattern.split("/")
    return _parts_match(relative.split("/"), [*wanted, "*"] if wanted[-1] == "**" else wanted)


def _parts_match(parts: list[str], wanted: list[str]) -> bool:
    if not wanted:
        return not parts
    if wanted[0] == "**":
        return any(_parts_match(parts[skip:], wanted[1:]) for skip in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], wanted[0]) and _parts_match(parts[1:], wanted[1:])


def _checked(text: str, root: Path | str, files: list) -> InputFiles:
    found = {formats.file_format(p) for p in files}
    if len(found) > 1:
        raise InputError(f"{text}: mixes {' and '.join(sorted(found))} files; give one format at a time")
    return InputFiles(text, root, files, True, found.pop())


def expand(spec: str | Path) -> InputFiles:
    """The files of INPUT; an empty match or a mix of formats is an InputError (exit 2)."""
    text = str(spec)
    if is_url(text):
        return _expand_url(text)
    path = Path(text).expanduser()
    if path.is_dir():
        root = path
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and _visible(str(p.relative_to(root))) and _known_type(p)
        )
        if not files:
            raise InputError(f"{text}: no CSV, TSV, JSON Lines or Parquet files in this folder")
    elif names_many(text):
        root = _glob_root(text)
        files = _glob_files(text, root)
        if not files:
            raise InputError(f"{text}: matches no files")
    else:
        return InputFiles(text, path.parent, [path], False, formats.file_format(path))
    return _checked(text, root, files)
