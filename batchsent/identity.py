"""Fingerprints of what a result depends on: the input file and the model.

Used to refuse resuming a run whose input or model changed, to key ONNX exports, and to
record a run in its manifest.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .storage import fingerprint, is_url, remote

EDGE_BYTES = 1 << 20


def package_version(package: str) -> str | None:
    """An installed package's version (None when absent), as the manifest and the cache key record it."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def input_fingerprint(path: Path | str) -> dict[str, Any]:
    """Size, mtime and a hash of the first and last MiB: cheap, and changes when the file does.

    An object on object storage: its URL, size and modification time.
    """
    if is_url(path):
        return fingerprint(remote(str(path)))
    assert isinstance(path, Path)
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        digest.update(stream.read(EDGE_BYTES))
        if stat.st_size > EDGE_BYTES:
            stream.seek(max(EDGE_BYTES, stat.st_size - EDGE_BYTES))
            digest.update(stream.read(EDGE_BYTES))
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256_edges": digest.hexdigest()}


def model_identity(model_ref: str, model: Any) -> dict[str, Any]:
    """Where the weights came from: a local folder (with its weight files) or a Hub id and commit."""
    path = Path(model_ref).expanduser()
    config_json = model.config.to_json_string(use_diff=False)
    identity: dict[str, Any] = {"config_sha256": hashlib.sha256(config_json.encode()).hexdigest()}
    if path.is_dir():
        identity["path"] = str(path.resolve())
        identity["weights"] = sorted(
            [f.name, f.stat().st_size, f.stat().st_mtime_ns]
            for f in path.iterdir()
            if f.suffix in {".safetensors", ".bin"}
        )
    else:
        identity["hub_id"] = model_ref
        identity["revision"] = getattr(model.config, "_commit_hash", None)
    return identity
