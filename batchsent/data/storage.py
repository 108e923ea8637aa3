"""Object storage: ``s3://``, ``gs://`` and ``az://`` paths through pyarrow's filesystems.

Configuration comes only from each ecosystem's standard environment, as its own tools
read it: for S3 ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_REGION``/``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``); for Google Cloud Storage the application-default credentials;
for Azure ``AZURE_STORAGE_ACCOUNT_NAME`` and its key or the default credential chain.
pyarrow's clients retry a failed request a bounded number of times, then fail; every
failure becomes one line naming the URL.

Reads stream. Outputs are staged on local disk by the job and uploaded when complete
(``upload``), so a failed run leaves no object under the output name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchsent.errors import BatchsentError, InputError, OutputError, ScoringError, UsageError, first_line

SCHEMES = ("s3://", "gs://", "gcs://", "az://", "abfs://", "abfss://")
UPLOAD_BLOCK_BYTES = 8 << 20
# The user-info part of any URL (``scheme://KEY:SECRET@host``): a credential, never printed or recorded. It runs
# to the last "@" before the host's "/" (a secret may hold "@"), and a URL that went through a path, which folds
# "//" into "/", is still one.
_USER_INFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*:/{1,3})[^/\s'\"]*@")
# Any ``scheme://`` location, supported or not: one that is not an object-storage URL is refused, never taken
# for a local path named "https:/host/...".
_ANY_URL = re.compile(r"(?i)^([a-z][a-z0-9+.-]*)://")
REDACTED = "***@"


def is_url(value: object) -> bool:
    return isinstance(value, str) and value.lower().startswith(SCHEMES)


def check_location(option: str, value: object) -> None:
    """Refuse a ``scheme://`` location whose scheme batchsent does not read or write (http, hf, file, hdfs...)."""
    match = _ANY_URL.match(value) if isinstance(value, str) else None
    if match and not is_url(value):
        raise UsageError(
            f"{option} {redact(str(value))}: {match.group(1)}:// is not supported; give a local path or "
            "an s3://, gs:// or az:// URL"
        )


def redact(text: str) -> str:
    """``text`` with the user-info of every URL in it replaced: ``s3://KEY:SECRET@bucket/x`` -> ``s3://***@bucket/x``.

    Everything batchsent prints, logs or records goes through this (the summary, errors, notes,
    the manifest), so credentials given in a URL never leave the process.
    """
    return _USER_INFO.sub(lambda match: match.group(1) + REDACTED, text)


def redacted(value: object) -> object:
    """``value`` (strings, lists and dicts of them, nested) with every URL's user-info redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(item) for item in value]
    return value


@dataclass(frozen=True)
class Remote:
    """An object (or prefix) on object storage: its URL, pyarrow filesystem and path in it."""

    url: str
    fs: Any
    path: str

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def child(self, relative: str) -> Remote:
        return Remote(f"{self.url.rstrip('/')}/{relative}", self.fs, f"{self.path.rstrip('/')}/{relative}")

    def info(self, error: type[BatchsentError] = InputError) -> Any:
        """The object's FileInfo; a storage failure (denied, unreachable, no credentials) as one line. The first
        request is where credentials are looked for (Azure's chain runs the `az` CLI, kept off the terminal)."""
        import pyarrow as pa

        try:
            with native_stderr_silenced() if self.fs.type_name == "abfs" else contextlib.nullcontext():
                return self.fs.get_file_info(self.path)
        except (OSError, pa.ArrowException) as failure:
            raise error(f"{redact(self.url)}: {failure_reason(failure)}") from failure


def _pyarrow_uri(url: str) -> str:
    """pyarrow's spelling of a URL: ``az://container/path`` is ``abfs://container@account.dfs.core.windows.net/path``."""
    if url.lower().startswith("az://"):
        account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
        if not account:
            raise InputError(f"{url}: set AZURE_STORAGE_ACCOUNT_NAME to the storage account of this container")
        container, _, path = url[len("az://") :].partition("/")
        return f"abfs://{container}@{account}.dfs.core.windows.net/{path}"
    if url.lower().startswith("gcs://"):
        return "gs://" + url[len("gcs://") :]
    return url


def remote(url: str, error: type[BatchsentError] = InputError) -> Remote:
    """The filesystem and path of ``url``, configured from the environment."""
    import pyarrow as pa
    from pyarrow import fs

    uri = _pyarrow_uri(url)
    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
    except (OSError, ValueError, pa.ArrowException) as failure:
        raise error(f"{redact(url)}: {failure_reason(failure)}") from failure
    return Remote(url, filesystem, path)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null for the block (what native code and its child processes write)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def filesystem_of(location: str) -> tuple[Any, str]:
    """The pyarrow filesystem and path of a local folder or an object-storage URL."""
    from pyarrow import fs

    if is_url(location):
        found = remote(location)
        return found.fs, found.path
    return fs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temporary: Path, path: Path) -> None:
    """Make a finished temporary file durable and rename it to ``path`` (atomic on one filesystem): the one
    way every local file batchsent writes is published (writers.atomic_file, the writers, the shared cache,
    the Ray engine's merged outputs)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    _fsync(temporary)
    os.replace(temporary, path)
    _fsync(path.parent)


def publish_folder(staging: Path, path: Path) -> None:
    """Rename a finished folder (its files already published) to ``path`` and make the rename durable: the one
    way a local output folder appears, whole or not at all. An existing ``path`` is replaced."""
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(staging, path)
    _fsync(path.parent)


def write_bytes_atomically(filesystem: Any, folder: str, name: str, data: bytes) -> None:
    """Write ``data`` as ``folder/name``, whole or not at all (as ``write_parquet_atomically``)."""
    from pyarrow import fs

    if isinstance(filesystem, fs.LocalFileSystem):
        filesystem.create_dir(folder, recursive=True)
        temporary = Path(f"{folder}/.{name}.{uuid.uuid4().hex}.partial")
        try:
            temporary.write_bytes(data)
            publish(temporary, Path(folder) / name)
        finally:
            temporary.unlink(missing_ok=True)
    else:
        with filesystem.open_output_stream(f"{folder}/{name}") as stream:
            stream.write(data)


def write_parquet_atomically(filesystem: Any, folder: str, name: str, table: Any) -> None:
    """Write ``table`` as ``folder/name``, whole or not at all: locally under a temporary name then renamed,
    on object storage by one PUT (atomic by itself). Readers skip names that start with a dot."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    if isinstance(filesystem, fs.LocalFileSystem):  # an object store has no folders to create
        filesystem.create_dir(folder, recursive=True)
        temporary = Path(f"{folder}/.{name}.{uuid.uuid4().hex}.partial")
        try:
            pq.write_table(table, str(temporary), filesystem=filesystem)
            publish(temporary, Path(folder) / name)
        finally:
            temporary.unlink(missing_ok=True)
    else:
        pq.write_table(table, f"{folder}/{name}", filesystem=filesystem)


def failure_reason(failure: BaseException) -> str:
    """A storage error in one line: the AWS/GCS/Azure error name and its detail, without pyarrow's wrapping."""
    text = first_line(failure)
    for marker, meaning in (
        ("NETWORK_CONNECTION", "cannot reach the storage endpoint"),
        ("ACCESS_DENIED", "access denied (check the credentials in the environment)"),
        ("INVALID_ACCESS_KEY_ID", "access denied: the access key id is not known"),
        ("SIGNATURE_DOES_NOT_MATCH", "access denied: the secret key does not match"),
        ("NO_SUCH_BUCKET", "no such bucket"),
        (
            "AuthenticationException",
            (
                "no Azure credentials found (set AZURE_STORAGE_ACCOUNT_KEY, "
                "or sign in with az login or a managed identity)"
            ),
        ),
    ):
        if marker in text:
            return f"{meaning} ({text})"
    return text


def check_readable(location: Remote) -> int:
    """The size of an input object; a missing object, a prefix or a storage failure is an InputError."""
    from pyarrow import fs

    info = location.info()
    if info.type == fs.FileType.NotFound:
        _check_bucket(location, InputError)
        raise InputError(f"{location.url}: no such object")
    if info.type != fs.FileType.File:
        raise InputError(f"{location.url}: not a file")
    return int(info.size)


def check_writable(location: Remote, overwrite: bool) -> None:
    """Refuse an output object that exists (without ``overwrite``) or whose bucket does not."""
    from pyarrow import fs

    if location.info(OutputError).type != fs.FileType.NotFound:
        if not overwrite:
            raise OutputError(f"{location.url}: already exists; pass --overwrite to replace it")
        return
    _check_bucket(location, OutputError)


def _check_bucket(location: Remote, error: type[BatchsentError]) -> None:
    """Refuse a location whose bucket (or container) does not exist, naming it."""
    from pyarrow import fs

    bucket = location.path.split("/", 1)[0]
    try:
        found = location.fs.get_file_info(bucket).type
    except OSError as failure:
        raise error(f"{location.url}: {failure_reason(failure)}") from failure
    if found == fs.FileType.NotFound:
        raise error(f"{location.url}: no such bucket or container {bucket!r}")


def fingerprint(location: Remote) -> dict[str, Any]:
    """What identifies an input object's content for --resume and the manifest: size and mtime."""
    info = location.info()
    return {"url": location.url, "size": info.size, "mtime_ns": info.mtime_ns}


def upload(local: Path, location: Remote) -> None:
    """Copy a complete local file to ``location``: one upload, completed only after the last byte.

    A failure is a ScoringError (exit 1): it happens after the scoring.
    pyarrow's stream completes a multipart upload when it is closed, even when dropped
    after a failure, so a failed copy deletes whatever reached the name.
    """
    stream, started = None, time.time()
    try:
        stream = location.fs.open_output_stream(location.path, compression=None)  # the bytes as staged
        with open(local, "rb") as source:
            shutil.copyfileobj(source, stream, UPLOAD_BLOCK_BYTES)
        stream.close()
    except (OSError, ValueError) as failure:
        _discard(stream, location, started)
        raise ScoringError(
            f"{location.url}: the upload failed, nothing was published: {failure_reason(failure)}"
        ) from failure
    except BaseException:
        _discard(stream, location, started)
        raise


def _discard(stream: Any, location: Remote, started: float) -> None:
    """Drop a failed upload, and delete an object this upload made (not an older one it failed to replace)."""
    try:
        if stream is not None:
            stream.close()
    except Exception:
        pass
    try:
        info = location.fs.get_file_info(location.path)
        if info.mtime is not None and info.mtime.timestamp() >= started - 1:
            location.fs.delete_file(location.path)
    except Exception:
        pass
