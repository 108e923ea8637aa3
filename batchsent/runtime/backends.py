"""Runners: padded numpy inputs in, float32 logits out, with torch or ONNX Runtime.

The Classifier tokenizes, batches and post-processes the same way whatever runs the
model. ``--quantize int8`` is dynamic int8 quantization of the Linear layers: with torch
through ``runtime.int8`` (per-token activations, CPU), with ONNX Runtime through its own
``quantize_dynamic`` on the exported graph (one activation scale per batch). ONNX exports
are cached under the Hugging Face cache, keyed by what they were made from.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from batchsent.data.writers import atomic_file
from batchsent.errors import ModelLoadError, UsageError, first_line
from batchsent.runtime.cpu import this_cpu
from batchsent.runtime.device import to_device
from batchsent.state.identity import model_identity

BACKENDS = ("torch", "onnx")
QUANTIZATIONS = ("int8",)
ONNX_OPSET = 17
EXPORT_FORMAT = 2  # bump when the way models are exported changes (2: checked against torch before it is kept)
EXPORT_TOLERANCE = 1e-4  # largest logit difference from torch an export may show on the check batches


def check_backend_options(backend: str, quantize: str | None, dtype: str, int8_kernel: str | None = None) -> None:
    """Refuse backend/precision combinations before anything loads."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: expected torch or onnx")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UsageError(f"--quantize {quantize!r}: expected int8")
    if backend == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        raise UsageError("--backend onnx needs onnxruntime: pip install 'batchsent[onnx]'")
    if backend == "onnx" and importlib.util.find_spec("onnx") is None:
        raise UsageError("--backend onnx needs onnx to export the model: pip install 'batchsent[onnx]'")
    if backend == "onnx" and dtype not in ("auto", "float32"):
        raise UsageError(f"--backend onnx runs float32 (or --quantize int8), not --dtype {dtype}")
    if quantize == "int8" and dtype not in ("auto", "float32"):
        raise UsageError(f"--quantize int8 starts from float32 weights; drop --dtype {dtype}")
    if int8_kernel is not None and (quantize != "int8" or backend != "torch"):
        raise UsageError("an int8 kernel is chosen only with --quantize int8 and the torch backend")
    if quantize == "int8" and backend == "torch":
        from batchsent.runtime.int8 import check_kernel, choose_kernel

        if int8_kernel is None:
            choose_kernel(this_cpu())  # refuses where int8 would be slower than float32
        else:
            check_kernel(int8_kernel)


def device_refusal(backend: str, quantize: str | None, device_type: str) -> str | None:
    """Why this backend cannot run on ``device_type`` here, or None when it can."""
    if backend == "torch" and quantize == "int8" and device_type != "cpu":
        return f"--quantize int8 with the torch backend runs on CPU only, not {device_type}"
    if backend == "onnx" and device_type == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "--backend onnx on CUDA needs onnxruntime-gpu (the CUDA execution provider)"
    if backend == "onnx" and device_type not in ("cpu", "cuda"):
        return f"--backend onnx runs on cpu or cuda, not {device_type}"
    return None


def attention_kernels(device: Any) -> contextlib.AbstractContextManager:
    """The scaled-dot-product attention kernels to allow on ``device``.

    On CUDA, cuDNN's attention builds an execution plan for every new (rows, length)
    shape, and length-sorted batches bring a new shape almost every batch: on an H100 a
    first pass over 6,000 rows at float16 took 2.6 s against 0.2 s once the plans were
    built. Flash and memory-efficient attention need no plans, so only they (and the
    math fallback) are allowed there. Elsewhere torch's own choice stands.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3 has no cuDNN attention to avoid
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class TorchRunner:
    """Runs a transformers model on its device under ``torch.inference_mode``."""

    def __init__(self, model: Any, device: Any) -> None:
        self.model = model
        self.device = device

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode(), attention_kernels(self.device):
            tensors = {name: to_device(value, self.device) for name, value in inputs.items()}
            return self.model(**tensors).logits.float().cpu().numpy()


class OnnxRunner:
    """Runs an exported model with ONNX Runtime (CUDA provider on CUDA devices)."""

    def __init__(self, path: Path, device: Any, threads: int | None) -> None:
        import onnxruntime as ort

        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_names = {i.name for i in self.session.get_inputs()}

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: value for name, value in inputs.items() if name in self.input_names}
        return np.asarray(self.session.run(["logits"], feed)[0], dtype=np.float32)


def onnx_cache_root() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("BATCHSENT_ONNX_CACHE", Path(constants.HF_HOME) / "batchsent" / "onnx"))


def export_key(model_ref: str, model: Any, input_names: list[str], quantize: str | None) -> str:
    """Hash of what an export depends on: model identity, revision, config, weights, options."""
    identity = {"format": EXPORT_FORMAT, "opset": ONNX_OPSET, "inputs": input_names, "quantize": quantize}
    identity["model"] = model_identity(model_ref, model.config)
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def onnx_model(
    model_ref: str, model: Any, sample: dict[str, np.ndarray], quantize: str | None, checks: list[dict[str, np.ndarray]]
) -> tuple[Path, bool]:
    """Path of the cached ONNX export for this model (exported now if missing) and whether it was.

    A new export is traced on ``sample`` and kept only when ONNX Runtime gives torch's logits
    (within EXPORT_TOLERANCE) on every batch of ``checks``; otherwise it is refused (exit 2).
    """
    names = list(sample)
    directory = onnx_cache_root() / export_key(model_ref, model, names, quantize)
    target = directory / ("model.int8.onnx" if quantize == "int8" else "model.onnx")
    if target.is_file():
        return target, False
    directory.mkdir(parents=True, exist_ok=True)
    float_path = directory / "model.onnx"
    if not float_path.is_file():
        with atomic_file(float_path) as temporary:
            _export(model, sample, temporary)
            _check_export(model, temporary, checks)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint on the root logger
        try:
            with atomic_file(target) as temporary:
                quantize_dynamic(str(float_path), str(temporary), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
    return target, True


def _check_export(model: Any, path: Path, checks: list[dict[str, np.ndarray]]) -> None:
    """Refuse an export whose logits differ from torch's by more than EXPORT_TOLERANCE (or that fails to run)."""
    import onnxruntime as ort
    import torch

    worst = 0.0
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        for inputs in checks:
            with torch.inference_mode():
                expected = (
                    model(**{name: torch.from_numpy(value) for name, value in inputs.items()}).logits.float().numpy()
                )
            got = session.run(["logits"], {name: value for name, value in inputs.items() if name in names})[0]
            worst = max(worst, float(np.abs(np.asarray(got, dtype=np.float32) - expected).max()))
    except Exception as error:
        raise ModelLoadError(
            f"the ONNX export of this model fails on inputs of other lengths ({first_line(error)}); use --backend torch"
        ) from error
    if not worst <= EXPORT_TOLERANCE:
        raise ModelLoadError(
            f"the ONNX export of this model differs from torch by {worst:.1e} (more than "
            f"{EXPORT_TOLERANCE:.0e}) on inputs of other lengths; use --backend torch"
        )


def _export(model: Any, sample: dict[str, np.ndarray], path: Path) -> None:
    import torch

    names = list(sample)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    tensors = {name: torch.from_numpy(value) for name, value in sample.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches
        try:
            torch.onnx.export(
                logits_only(model.float().cpu(), names).eval(),
                args=tuple(tensors[name] for name in names),
                f=str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=axes,
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        except Exception as error:
            raise ModelLoadError(f"cannot export this model to ONNX: {first_line(error)}") from error


def _logits_only_class() -> type:
    import torch

    class LogitsOnly(torch.nn.Module):
        """The model with the logits as its only output: encoder-decoder models (T5) return caches and
        other state beside them, which the tracer cannot export."""

        def __init__(self, model: Any, names: list[str]) -> None:
            super().__init__()
            self.model, self.names = model, names

        def forward(self, *tensors: Any) -> Any:
            return self.model(**dict(zip(self.names, tensors, strict=True)), return_dict=True).logits

    return LogitsOnly


def logits_only(model: Any, names: list[str]) -> Any:
    """``model`` as a module whose one output is its logits (what exports and traces take)."""
    return _logits_only_class()(model, names)
