"""``batchsent info``: this machine's CPU, builds and GPUs, and which variants it can run."""

from __future__ import annotations

import importlib.util
from typing import Any

from batchsent.errors import UsageError
from batchsent.runtime.cpu import CpuInfo, this_cpu
from batchsent.runtime.graphs import kept_graphs
from batchsent.runtime.precision import resolve_precision
from batchsent.state.identity import package_version
from batchsent.state.kept import kept_setups


def _variants(cpu: CpuInfo) -> dict[str, str]:
    """Each CPU variant: "yes" with its kernel, or "no: why"."""
    from batchsent.runtime.int8 import choose_kernel

    try:
        int8 = f"yes ({choose_kernel(cpu)})"
    except UsageError as refusal:
        int8 = f"no: {refusal}"
    onnx = importlib.util.find_spec("onnxruntime") is not None
    return {
        "float32": "yes",
        "bfloat16": "yes" if cpu.native_bf16 else "no: no native bfloat16 (AVX512-BF16/AMX)",
        "torch int8": int8,
        "onnx float32": "yes" if onnx else "no: pip install 'batchsent[onnx]'",
        "onnx int8": "yes" if onnx and importlib.util.find_spec("onnx") else "no: pip install 'batchsent[onnx]'",
    }


def collect() -> dict[str, Any]:
    """Everything ``batchsent info`` prints, as plain data (also for scripts: ``--json``)."""
    import torch

    cpu = this_cpu()
    cuda = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    fast_device = "cuda" if cuda else "cpu"
    fast = resolve_precision("fast", fast_device)
    try:
        tunings, store_error = _tunings(cpu), None
    except UsageError as error:  # a damaged or unreadable store: said, not shown as "0 stored"
        tunings, store_error = [], str(error)
    return {
        "cpu": {"model": cpu.model, "machine": cpu.machine, "class": cpu.cpu_class, "features": cpu.features},
        "builds": {
            "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_cuda": torch.version.cuda,
            "onnxruntime": package_version("onnxruntime"),
            "transformers": package_version("transformers"),
        },
        "cuda_devices": cuda,
        "variants": _variants(cpu),
        "precision_fast": {
            "device": fast_device,
            "dtype": fast.dtype if fast_device != "cpu" else None,
            "quantize": fast.quantize,
            "basis": fast.basis,
        },
        "tunings": tunings,
        "tuning_store_error": store_error,
        "graphs": kept_graphs(),
        "setups": kept_setups(),
    }


def _tunings(cpu: CpuInfo) -> list[dict[str, Any]]:
    """The stored tunings measured on this CPU (``batchsent tune``, or a first ``--precision fast``)."""
    from batchsent.runtime.tuning import TuningStore, scope_of, threads_text

    here = {key: value for key, value in scope_of("", 0, 0, cpu).items() if key in ("cpu", "cpu_flags", "format")}
    stored = TuningStore().all()  # a damaged store is a UsageError, which collect() shows
    return [
        {
            "scope": tuning.scope,
            "threads": threads_text(tuning.scope),
            "sample": tuning.sample,
            "measured_at": tuning.measured_at,
            "load_average": tuning.load_average,
            "versions": tuning.facts["versions"],
            "chosen": tuning.chosen.variant,
            "table": tuning.table(),
        }
        for tuning in stored
        if all(tuning.scope.get(key) == value for key, value in here.items())
    ]


def render(info: dict[str, Any]) -> list[str]:
    """``collect()``'s data as the lines ``batchsent info`` prints."""
    cpu, builds, fast = info["cpu"], info["builds"], info["precision_fast"]
    features = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in cpu["features"].items())
    lines = [
        f"cpu: {cpu['model']} ({cpu['machine']}, class {cpu['class']})",
        f"cpu features: {features}",
        "builds: " + ", ".join(f"{name} {value or 'absent'}" for name, value in builds.items()),
        f"cuda devices: {', '.join(info['cuda_devices']) or 'none'}",
    ]
    lines += [f"variant {name}: {state}" for name, state in info["variants"].items()]
    graphs = info["graphs"]
    lines.append(
        f"kept traces (CPU runs after a model's first, at float32, bfloat16 or torch int8): {graphs['kept']} "
        f"({graphs['bytes'] / 2**20:,.0f} MiB) in {graphs['folder']}"
        + ("" if graphs["enabled"] else "; off (BATCHSENT_GRAPHS)")
    )
    setups = info["setups"]
    lines.append(
        f"kept setups (tokenizer and config, so runs after a model's first skip transformers): {setups['kept']} "
        f"({setups['bytes'] / 2**20:,.1f} MiB) in {setups['folder']}"
    )
    if info.get("tuning_store_error"):
        lines.append(f"tuning store: {info['tuning_store_error']}; move it aside to start over")
    elif fast["device"] == "cpu":
        lines.append(f"--precision fast here: {fast['basis']}; {len(info['tunings'])} stored for this CPU")
    else:
        lines.append(
            f"--precision fast here: {fast['quantize'] or fast['dtype']} on {fast['device']}; measured: {fast['basis']}"
        )
    for tuning in info["tunings"]:
        scope = tuning["scope"]
        versions = ", ".join(f"{name} {version or 'absent'}" for name, version in tuning["versions"].items())
        lines.append(
            f"tuning {scope['model']} (max length {scope['max_length']}, {tuning['threads']}; "
            f"{tuning['measured_at']}, {tuning['sample']}, load average "
            f"{'unknown' if tuning['load_average'] is None else tuning['load_average']}; {versions}): "
            f"fast runs {tuning['chosen']}"
        )
        lines += tuning["table"]
    return lines
