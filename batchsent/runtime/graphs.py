"""Traced graphs: float32, bfloat16 and torch int8 encoder classifiers on CPU, kept so that later runs start
without transformers' modeling code.

Importing a model class from transformers costs more than the rest of a small run: on a 2-core Xeon, 1.4 s
(its modeling code imports torch.distributed, torch._dynamo, sympy and scipy), against 0.2 s to read the
weights. A TorchScript trace of the model and its head loads in about 0.1 s with torch alone.

The first run of a model on a machine traces it, runs the trace and the model on batches of other shapes
(padded, one row, the longest row the run allows) and keeps the trace only when every logit is bitwise
equal; it then scores with the trace. Later runs load the trace. A run scores with the trace whether it
traced it or loaded it, so a resumed run replays the same computation as the run it resumes.

Only for architectures whose forward takes no Python branch on its inputs' values or shapes that a trace
would freeze (TRACEABLE), on CPU with the torch backend, float32, bfloat16 or torch int8 (what ``--precision
fast`` often runs, whose small runs would otherwise pay the import float32's no longer does; an int8 trace
holds the quantized layers, so a later run skips the quantization too), and no model code of its own. A trace
is keyed by the model's identity (its files' content, or its Hub commit and config), its dtype and int8
kernel, its input names, and the torch and transformers versions. ``BATCHSENT_GRAPHS=off`` turns this off;
the traces live beside the tuning store (``batchsent info`` shows where), one per model version and variant,
and may be deleted at any time. A changed model or an upgrade leaves its old traces unused: when a run keeps a
new trace, traces no run has loaded for UNUSED_DAYS go, and so do partial files a killed run left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from batchsent.data.writers import atomic_file
from batchsent.runtime.backends import logits_only
from batchsent.state.identity import digest_memo_path, package_version
from batchsent.state.kept import PARTIAL_HOURS, UNUSED_DAYS

GRAPH_FORMAT = 1  # bump when what a trace holds or how it is checked changes: older traces are then not found

# transformers model types whose forward traces into a graph that holds for every batch shape: no branch on a
# tensor's value, no length-dependent position scheme computed in Python. Tested in tests/test_graphs.py.
TRACEABLE = frozenset({"bert", "distilbert", "roberta", "xlm-roberta", "electra", "albert", "camembert"})
TRACED_DTYPES = frozenset({"float32", "bfloat16"})


def graphs_enabled() -> bool:
    return os.environ.get("BATCHSENT_GRAPHS", "on").strip().lower() not in {"off", "0", "false", "no"}


def graph_folder() -> Path:
    """Where traces are kept: ``graphs/`` beside the file-hash memo and the tuning store."""
    return digest_memo_path().with_name("graphs")


def kept_graphs() -> dict[str, Any]:
    """What ``batchsent info`` says of the kept traces: on or off, where, how many and their size."""
    files = [path for path in graph_folder().glob("*/graph.pt") if path.is_file()]
    return {
        "enabled": graphs_enabled(),
        "folder": str(graph_folder()),
        "kept": len(files),
        "bytes": sum(path.stat().st_size for path in files),
    }


def traceable(
    model_type: str | None, custom_code: bool, backend: str, dtype: str, quantize: str | None, device_type: str
) -> bool:
    """Whether a model of this type, run this way, scores with a traced graph (``custom_code``: its config maps
    classes to its own code, which runs as its authors wrote it)."""
    return (
        graphs_enabled()
        and backend == "torch"
        and dtype in TRACED_DTYPES
        and quantize in (None, "int8")
        and device_type == "cpu"
        and model_type in TRACEABLE
        and not custom_code
    )


def graph_key(
    identity: dict[str, Any], input_names: list[str], dtype: str = "float32", int8_kernel: str | None = None
) -> str:
    """What a trace depends on: the model's identity, its dtype and int8 kernel, its inputs, and the libraries
    that traced it."""
    facts: dict[str, Any] = {
        "format": GRAPH_FORMAT,
        "model": identity,
        "inputs": input_names,
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
    }
    if dtype != "float32":  # named only when not float32, so the float32 traces kept before keep their keys
        facts["dtype"] = dtype
    if int8_kernel is not None:
        facts["int8_kernel"] = int8_kernel
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_graph(key: str) -> tuple[Any, int | None] | None:
    """The kept trace under ``key`` and the model's position capacity; None when there is none (or it is
    unreadable: a damaged trace is replaced by the next run's)."""
    import torch

    folder = graph_folder() / key
    try:
        meta = json.loads((folder / "graph.json").read_text())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice, on every load
            graph = torch.jit.load(str(folder / "graph.pt"), map_location="cpu")
    except Exception:
        return None
    with contextlib.suppress(OSError):  # a read-only state folder: the trace is used all the same
        os.utime(folder / "graph.json")  # last used, for prune_graphs
    return graph.eval(), meta.get("capacity")


def prune_graphs(now: float | None = None) -> None:
    """Remove the traces no run has loaded for UNUSED_DAYS and partial files older than PARTIAL_HOURS. A trace's
    ``graph.json`` is touched whenever a run loads it."""
    now = time.time() if now is None else now
    for folder in graph_folder().glob("*/"):
        try:
            meta = folder / "graph.json"
            unused = meta.is_file() and now - meta.stat().st_mtime > UNUSED_DAYS * 86400
            for path in folder.iterdir():
                partial = path.name.endswith(".partial") and now - path.stat().st_mtime > PARTIAL_HOURS * 3600
                if unused or partial:
                    path.unlink()
            empty = not any(folder.iterdir()) and now - folder.stat().st_mtime > PARTIAL_HOURS * 3600
            if unused or empty:
                folder.rmdir()
        except OSError:
            continue  # another run pruning or writing at the same time, or a folder that is not ours to change


def trace_graph(
    model: Any,
    example: dict[str, np.ndarray],
    checks: list[dict[str, np.ndarray]],
    key: str,
    capacity: int | None,
) -> Any | None:
    """A trace of ``model`` on ``example``, kept under ``key`` when its logits equal the model's bit for bit on
    every batch of ``checks``; None when they differ somewhere or tracing fails (the model then runs eagerly)."""
    import torch

    names = list(example)
    wrapped = logits_only(model, names).eval()
    try:
        with warnings.catch_warnings(), torch.inference_mode(), torch.jit.optimized_execution(False):
            warnings.simplefilter("ignore")  # the deprecation notice and tracer notes on Python values
            graph = torch.jit.trace(wrapped, _tensors(example, names), check_trace=False)
            for batch in checks:
                if not torch.equal(graph(*_tensors(batch, names)), wrapped(*_tensors(batch, names))):
                    return None
    except Exception:
        return None
    folder = graph_folder() / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / "graph.pt") as temporary, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            torch.jit.save(graph, str(temporary))
        with atomic_file(folder / "graph.json") as temporary:
            temporary.write_text(json.dumps({"capacity": capacity, "inputs": names}))
    except OSError:
        return graph  # a state folder that cannot take it: this run still scores with the trace, the next traces again
    prune_graphs()
    return graph


def _tensors(inputs: dict[str, np.ndarray], names: list[str]) -> tuple[Any, ...]:
    import torch

    return tuple(torch.from_numpy(inputs[name]) for name in names)


class GraphRunner:
    """Runs a traced graph on CPU: padded numpy inputs in, float32 logits out."""

    def __init__(self, graph: Any, names: list[str]) -> None:
        self.graph, self.names = graph, names

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        # optimized_execution(False): the graph runs as traced, op for op, never re-specialised after its
        # first calls, so its logits stay those checked against the model
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            return self.graph(*_tensors(inputs, self.names)).float().numpy()
