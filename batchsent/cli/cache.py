"""``batchsent cache stats|prune|export``: look after a prediction cache: a SQLite file (``batchsent.cache.store``), or
a Ray run's shared folder or object prefix (``batchsent.cache.shared``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from batchsent.cache.shared import SharedCache, export_sqlite, is_shared_location
from batchsent.cache.store import CacheError, PredictionCache, parse_age
from batchsent.cli.progress import Reporter

cache_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Look after a prediction cache (--cache).")

CachePath = Annotated[
    str,
    typer.Argument(
        help="The cache as given to --cache: a SQLite file, or a Ray run's folder or s3://, gs://, az:// prefix.",
        show_default=False,
        metavar="PATH",
    ),
]


def _open(path: str) -> PredictionCache | SharedCache:
    """The cache at ``path``, which must exist: a folder or prefix is a shared cache, a file a SQLite one."""
    if is_shared_location(path):
        return SharedCache(path, create=False, named="cache")
    return PredictionCache(Path(path), create=False, named="cache")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _size(count: int) -> str:
    return f"{count / 2**20:,.1f} MiB"


@cache_app.command("stats")
def stats_command(
    path: CachePath,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of lines.")] = False,
) -> None:
    """Entries, models, size on disk and last use of a cache."""
    try:
        cache = _open(path)
        try:
            stats = cache.stats()
        finally:
            cache.close()
    except CacheError as error:
        Reporter("text").fail(str(error), error.exit_code)
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    typer.echo(
        f"{stats['path']}: {stats['entries']:,} entries, {len(stats['models'])} model key(s), {_size(stats['bytes'])}, "
        f"{stats['runs']:,} run(s), last used {_when(stats['last_used'])}"
    )
    for model in stats["models"]:
        description = model["description"]
        how = f"{description.get('device_type')} {description.get('dtype')}"
        if description.get("quantize"):
            how += f" {description['quantize']}/{description.get('kernel') or description.get('backend')}"
        typer.echo(
            f"  {model['name']}: {model['entries']:,} entries, last used {_when(model['last_used'])} "
            f"[{how}, max length {description.get('max_length')}, {description.get('long_text')}]"
        )


@cache_app.command("prune")
def prune_command(
    path: CachePath,
    older_than: Annotated[
        str | None, typer.Option(help="Remove entries not used for this long: 30d, 12h, 90m, 2w.", metavar="AGE")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="Remove the entries of this model (as given to --model); repeatable.", metavar="NAME"),
    ] = None,
) -> None:
    """Remove old entries, or a model's, and give their space back to the file system."""
    reporter = Reporter("text")
    try:
        age = None if older_than is None else parse_age(older_than)
        cache = _open(path)
        try:
            before = cache.size_bytes()
            removed, models = cache.prune(age, model or ())
            after = cache.size_bytes()
        finally:
            cache.close()
    except CacheError as error:
        reporter.fail(str(error), error.exit_code)
    reporter.note(
        f"{cache.shown if isinstance(cache, SharedCache) else path}: removed {removed:,} entries and {models} model key(s); "
        f"{_size(before)} -> {_size(after)}"
    )


@cache_app.command("export")
def export_command(
    source: Annotated[
        Path,
        typer.Argument(help="A SQLite cache file (the local engine's --cache).", show_default=False, metavar="SQLITE"),
    ],
    target: Annotated[
        str,
        typer.Argument(
            help="A Ray run's cache: a folder or s3://, gs://, az:// prefix (created when missing).",
            show_default=False,
            metavar="LOCATION",
        ),
    ],
) -> None:
    """Copy a SQLite cache's entries into a shared cache, so Ray runs reuse what local runs scored."""
    reporter = Reporter("text")
    try:
        if is_shared_location(source):
            raise CacheError(f"{source}: a folder; export reads a SQLite cache file")
        sqlite = PredictionCache(source, create=False, named="source")
        try:
            shared = SharedCache(target, named="target")
            entries, models = export_sqlite(sqlite, shared)
        finally:
            sqlite.close()
    except CacheError as error:
        reporter.fail(str(error), error.exit_code)
    except OSError as error:
        reporter.fail(f"{target}: cannot write: {error}", 1)
    reporter.note(f"{shared.shown}: {entries:,} entries of {models} model key(s) copied from {source}")
