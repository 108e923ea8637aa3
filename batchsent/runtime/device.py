"""Devices, dtypes and per-device batch limits.

The choices are pure functions of a device type ("cpu", "cuda", "mps") so they are
tested on machines without a GPU; only ``resolve_device`` and ``to_device`` touch torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchsent.errors import UsageError
from batchsent.runtime.cpu import AMX_BF16_FLAGS, this_cpu

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class BatchLimits:
    """Default caps of one model batch: rows, and padded tokens (rows x longest row)."""

    rows: int
    tokens: int


# CPU: measured by `make bench-sweep` (2 cores, review mix): batches that stay in cache
# beat large ones (rows/s at 512/1024/2048/4096/8192/16384 tokens: MiniLM 33.3/34.9/31.4/
# 31.0/31.6/25.5, DistilBERT-base shape 12.2/11.2/11.8/10.2/8.2/7.0); 1024 also keeps
# padding low when a chunk holds few rows.
CPU_LIMITS = BatchLimits(rows=128, tokens=1024)
# CPU bfloat16 on AMX tiles: larger products fill the tiles. On a 2-core Xeon with AMX, 400 review-mix rows of
# MiniLM took 5.88 s at 1024 tokens, 4.44 s at 2048, 4.09 s at 4096, 4.25 s at 8192; 200 rows of the DistilBERT
# shape 6.29/4.47/4.52 s at 1024/2048/4096. float32, torch int8 and ONNX int8 on the same CPU were flat or slower
# above 1024. Not measured on AVX512-BF16 without AMX, which keeps 1024.
CPU_AMX_BF16_LIMITS = BatchLimits(rows=128, tokens=4096)
# GPU: large batches keep the device busy; 64k fp16 tokens of a base-size encoder need
# about 2 GB of activations.
CUDA_LIMITS = BatchLimits(rows=1024, tokens=65536)


# cgroup limits of this process's memory (v2, then v1); "max" or a huge number means none.
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
# Config fields naming a model's feed-forward width, by family (BERT and most, T5, BART, DistilBERT, GPT-2).
FEED_FORWARD_FIELDS = ("intermediate_size", "d_ff", "encoder_ffn_dim", "hidden_dim", "n_inner")
# Device nodes (globs) without one of which no CUDA driver can reach a GPU on Linux: NVIDIA's, AMD ROCm's (which
# torch also calls cuda) and WSL2's GPU bridge.
GPU_DEVICE_NODES = ("/dev/nvidia*", "/dev/kfd", "/dev/dxg")


def check_device_name(device: str) -> None:
    """Reject a device string batchsent does not understand (no torch needed)."""
    if not DEVICE_PATTERN.match(device):
        raise UsageError(f"--device {device!r}: expected auto, cpu, cuda, cuda:N or mps")


def check_dtype_name(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")


def batch_limits(device_type: str, dtype: str = "float32") -> BatchLimits:
    """Default batch caps for a device type and the dtype that runs there."""
    if device_type == "cuda":
        return CUDA_LIMITS
    if device_type == "cpu" and dtype == "bfloat16" and this_cpu().has_any(AMX_BF16_FLAGS):
        return CPU_AMX_BF16_LIMITS
    return CPU_LIMITS


def resolve_dtype(dtype: str, device_type: str) -> str:
    """The dtype to run in: ``auto`` is float16 on CUDA and float32 elsewhere.

    float16 is refused off CUDA (CPU kernels for it are slow or missing).
    """
    check_dtype_name(dtype)
    if dtype == "auto":
        return "float16" if device_type == "cuda" else "float32"
    if dtype == "float16" and device_type not in ("cuda", "mps"):
        raise UsageError(f"--dtype float16 needs a CUDA device (this run is on {device_type}); use float32 or bfloat16")
    return dtype


@dataclass(frozen=True)
class Device:
    """Where a model runs: ``cpu``, ``cuda`` (all of it, or device ``index``) or ``mps``, written as torch writes it
    (torch takes ``str(device)``). Deciding on the CPU needs no torch, so an ONNX Runtime run there never imports it."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def cuda_impossible(
    torch_version: str | None = None, system: str | None = None, device_nodes: tuple[str, ...] = GPU_DEVICE_NODES
) -> str | None:
    """Why torch cannot reach a CUDA device here, learnt without importing torch (1.3 s, the whole of a cached
    ONNX run): a CPU-only build (a ``+cpu`` wheel), macOS, or a Linux machine without a GPU's device nodes. None
    where only torch can tell (where ``--device auto`` asks it)."""
    import glob
    import platform
    from importlib.metadata import PackageNotFoundError, version

    if torch_version is None:
        try:
            torch_version = version("torch")
        except PackageNotFoundError:
            return None  # the import fails later with the message that says how to install it
    if torch_version.partition("+")[2].startswith("cpu"):  # "2.13.0+cpu", older "2.1.0+cpu.cxx11.abi"
        return f"torch {torch_version} is a CPU-only build"
    system = system or platform.system()
    if system == "Darwin":
        return "torch has no CUDA on macOS"
    if system == "Linux" and not any(glob.glob(pattern) for pattern in device_nodes):
        return f"no GPU device node ({', '.join(device_nodes)}) is present"
    return None


def resolve_device(device: str, cuda_usable: bool = True) -> Device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device that exists here.

    ``auto`` is CUDA when present and ``cuda_usable`` (the backend can run there), else CPU; torch is asked only
    where CUDA or MPS could be the answer (``cuda_impossible``), so a run that ends on ONNX Runtime need not load it.
    """
    check_device_name(device)
    if device == "cpu" or (device == "auto" and (not cuda_usable or cuda_impossible() is not None)):
        return Device("cpu")
    import torch

    if device == "auto":
        return Device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is available to this torch ({torch.__version__})")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: Apple MPS is not available on this machine")
    kind, _, number = device.partition(":")
    return Device(kind, int(number) if number else None)


def check_dtype_supported(dtype: str, device: Any) -> None:
    """Refuse a dtype this device cannot run (or only emulates)."""
    if dtype == "bfloat16" and device.type == "cuda":
        import torch

        if not torch.cuda.is_bf16_supported():
            raise UsageError(f"--dtype bfloat16: {torch.cuda.get_device_name(str(device))} does not support it")
    if dtype == "bfloat16" and device.type == "cpu" and not this_cpu().native_bf16:
        raise UsageError(
            f"--dtype bfloat16: this CPU ({this_cpu().model}) has no native bfloat16 (AVX512-BF16/AMX), "
            "so it would run slower than float32; use --precision fast or float32"
        )


def to_device(array: Any, device: Any) -> Any:
    """A numpy array as a tensor on ``device``; on CUDA through pinned memory, asynchronously."""
    import torch

    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(str(device), non_blocking=True)
    return tensor if device.type == "cpu" else tensor.to(str(device))


def cuda_device_count() -> int:
    """CUDA GPUs torch can use here (0 on a CPU-only build, without initialising CUDA there)."""
    import torch

    return torch.cuda.device_count() if torch.backends.cuda.is_built() else 0


def host_memory(limits: tuple[str, ...] = CGROUP_MEMORY_LIMITS) -> int:
    """Bytes of memory this process may use: the machine's RAM, or its container's limit when lower."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in limits:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            memory = min(memory, int(text))
    return memory


def device_memory(device: Any) -> int:
    """Bytes of memory a batch may take on ``device``: the GPU's own on CUDA, else the host's."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(str(device)).total_memory)
    return host_memory()


def model_widths(config: Any) -> tuple[int, int, int] | None:
    """A model's hidden size, attention heads and feed-forward width, read from its config (None for a config
    without the usual fields: then its batches are not bounded)."""
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if not isinstance(hidden, int) or not isinstance(heads, int):
        return None
    widths = (getattr(config, name, None) for name in FEED_FORWARD_FIELDS)
    return hidden, heads, next((width for width in widths if isinstance(width, int)), 4 * hidden)


def activation_bytes_per_token(widths: tuple[int, int, int], longest: int, dtype: str) -> int:
    """Bytes of activations one padded token of a batch holds at its peak, for a model of ``widths``
    (``model_widths``).

    An upper estimate, as eager attention needs it (check_batch_options refuses a batch whose activations alone
    would exceed the device's whole memory; the weights come on top): the attention scores and
    their softmax (2 x heads x the batch's longest row, as eager and math attention hold them), the feed-forward
    layer (twice its width, for gated ones) and six hidden-size buffers (residual, norms, projections). Fused
    attention holds far less: on a 2-core Xeon, a 32,768-token MiniLM batch of 512-token rows (float32, kept
    trace) raised the peak RSS by 0.3 GiB against the 2.2 GiB estimated here.
    """
    hidden, heads, feed_forward = widths
    elements = 2 * heads * longest + 2 * feed_forward + 6 * hidden
    return elements * (2 if dtype in ("float16", "bfloat16") else 4)


def check_batch_options(
    batch_size: int | None,
    token_budget: int | None,
    widths: tuple[int, int, int] | None,
    max_length: int,
    dtype: str,
    device: Any,
) -> None:
    """Refuse a --token-budget or --batch-size whose batches could not fit in this device's memory.

    A batch holds at most the token budget in padded tokens (a row longer than it runs alone), rows of up to
    ``max_length`` tokens; and every row holds at least one token, which bounds the rows of a batch too.
    """
    if widths is None or (batch_size is None and token_budget is None):
        return
    memory = device_memory(device)
    where = f"this {'GPU' if device.type == 'cuda' else 'machine'}'s {memory / 2**30:.1f} GiB"
    for option, value, longest, rows in (
        ("--token-budget", token_budget, max_length, f"rows of up to {max_length} tokens"),
        ("--batch-size", batch_size, 1, "rows of a single token"),
    ):
        per_token = activation_bytes_per_token(widths, longest, dtype)
        if value is None or value * per_token <= memory:
            continue
        raise UsageError(
            f"{option} {value}: one batch would need about {value * per_token / 2**30:,.0f} GiB of activations "
            f"({dtype}, {rows}), more than {where}; give at most {memory // per_token}"
        )
