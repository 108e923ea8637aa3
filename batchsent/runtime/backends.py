"""Runners: padded numpy inputs in, float32 logits out, with torch or ONNX Runtime.

The Classifier tokenizes, batches and post-processes the same way whatever runs the
model. ``--quantize int8`` is dynamic int8 quantization of the Linear layers: with torch
through ``runtime.int8`` (per-token activations, CPU), with ONNX Runtime through its own
``quantize_dynamic`` on the exported graph (per-channel weights, one activation scale per
batch). ONNX exports are cached under the Hugging Face cache, keyed by what they were made
from; a run that finds its export cached never loads the torch model.

A BERT-like encoder (``FUSABLE``) is exported with eager attention and passed through ONNX
Runtime's transformer optimizer, which fuses each layer's attention, the embeddings' layer
norm and the bias-GELUs into single kernels: on an Intel Xeon its int8 measured 2.8x torch
float32 against 2.3x unfused (``make bench-onnx-variants``). The fused graph is kept only
when the optimizer fused attention and its logits pass the same check as any export;
otherwise the plain (SDPA) export is kept, and the Classifier's ``fused`` says which ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from batchsent.data.writers import atomic_file
from batchsent.errors import ModelLoadError, UsageError, first_line
from batchsent.runtime.cpu import this_cpu
from batchsent.runtime.device import to_device

BACKENDS = ("torch", "onnx")
QUANTIZATIONS = ("int8",)
ONNX_OPSET = 17
# Bump when the way models are exported changes (2: checked against torch before it is kept; 3: attention fused
# where it can be, int8 weights per channel; 4: keyed by the run's model identity, the capacity kept beside it).
EXPORT_FORMAT = 4
EXPORT_TOLERANCE = 1e-4  # largest logit difference from torch an export may show on the check batches
# Encoders whose eager attention ONNX Runtime's "bert" optimizer fuses (model_type in their config).
FUSABLE = frozenset({"bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra"})
FUSED, PLAIN = "model.fused.onnx", "model.onnx"  # float32 graphs; int8 adds ".int8" before ".onnx"
EXPORT_META = "export.json"  # the exported model's position capacity; written last, so its presence means complete


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


def export_key(identity: dict[str, Any], input_names: list[str], quantize: str | None) -> str:
    """Hash of what an export depends on: the model's identity (files' content, or Hub commit and config), its
    inputs, the options and how exports are made."""
    facts = {"format": EXPORT_FORMAT, "opset": ONNX_OPSET, "inputs": input_names, "quantize": quantize}
    facts["model"] = identity
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class OnnxGraph:
    """A cached ONNX graph: its file, whether this run made it, whether its attention is fused, and how many
    positions the exported model holds for one row (None: no such limit)."""

    path: Path
    exported: bool
    fused: bool
    capacity: int | None


class ExportSource(Protocol):
    """What an export is made from, loaded only when the cache lacks it: the float32 CPU model, a batch to trace
    it on, the batches to check the export on, and the model's position capacity."""

    def __call__(self) -> tuple[Any, dict[str, np.ndarray], list[dict[str, np.ndarray]], int | None]: ...


def onnx_model(
    identity: dict[str, Any], input_names: list[str], quantize: str | None, source: ExportSource
) -> OnnxGraph:
    """The cached ONNX graph for this model, exported now from ``source()`` if missing.

    A cached graph is used without loading the torch model, so a run after a machine's first pays neither
    transformers' modeling code nor the weights' read (about 2 s of a 10-row run). A new export is traced on the
    source's sample and kept only when ONNX Runtime gives torch's logits (within EXPORT_TOLERANCE) on every check
    batch; otherwise it is refused (exit 2). A fusable model's fused graph is tried first; the plain one is kept
    where fusing fails its checks, and a folder holds one or the other, so later runs never try again. The
    folder's ``export.json`` (the capacity) is written last: a folder without it is exported again.
    """
    directory = onnx_cache_root() / export_key(identity, input_names, quantize)
    meta = directory / EXPORT_META
    exported = False
    float_path = next((directory / name for name in (FUSED, PLAIN) if (directory / name).is_file()), None)
    try:
        capacity = json.loads(meta.read_text())["capacity"] if float_path is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        float_path = None
    if float_path is None:
        model, sample, checks, capacity = source()
        directory.mkdir(parents=True, exist_ok=True)
        exported = True
        float_path = directory / FUSED
        if not _fused_export(model, sample, checks, float_path):
            float_path = directory / PLAIN
            with atomic_file(float_path) as temporary:
                _export(model, sample, temporary)
                _check_export(model, temporary, checks)
        with atomic_file(meta) as temporary:
            temporary.write_text(json.dumps({"capacity": capacity}))
    fused = float_path.name == FUSED
    if quantize != "int8":
        return OnnxGraph(float_path, exported, fused, capacity)
    target = float_path.with_suffix(".int8.onnx")
    if not target.is_file():
        exported = True
        _quantize_int8(float_path, target)
    return OnnxGraph(target, exported, fused, capacity)


def _quantize_int8(source: Path, target: Path, per_channel: bool = True) -> None:
    """Dynamic int8 of ``source``'s weights, one scale per output channel (MiniLM's labels agree with float32's on
    99.0% of the tune sample against 96.7% with one scale per tensor, at the same speed; ``per_channel=False``
    gives the latter, which benchmarks compare)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint on the root logger
    try:
        with atomic_file(target) as temporary:
            quantize_dynamic(
                str(source),
                str(temporary),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                # the fused operators' outputs carry no type, which the quantizer otherwise refuses
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    finally:
        root.setLevel(level)


def _fused_export(model: Any, sample: dict[str, np.ndarray], checks: list[dict[str, np.ndarray]], target: Path) -> bool:
    """Export ``model`` with eager attention, fuse it with ONNX Runtime's optimizer into ``target``; whether a
    fused graph that passes the export checks was kept (False, and nothing written, when it is not fusable)."""
    config = model.config
    if config.model_type not in FUSABLE or not hasattr(model, "set_attn_implementation"):
        return False
    before = getattr(config, "_attn_implementation", None) or "sdpa"
    # Scratch in the system's temporary folder, not the cache: a run killed mid-export leaves nothing in the cache.
    with tempfile.TemporaryDirectory(prefix="batchsent-onnx-") as scratch:
        eager = Path(scratch) / "eager.onnx"
        try:  # any failure here leaves the plain export, which is made and checked as ever
            model.set_attn_implementation("eager")
            try:
                _export(model, sample, eager)
            finally:
                model.set_attn_implementation(before)
            fused = _optimized(eager, Path(scratch) / "fused.onnx", config)
            if fused is None:
                return False
            _check_export(model, fused, checks)
        except Exception:
            return False
        with atomic_file(target) as temporary:
            shutil.copyfile(fused, temporary)
    return True


def _optimized(source: Path, target: Path, config: Any) -> Path | None:
    """``source`` through ONNX Runtime's transformer optimizer into ``target``; None where no attention fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it logs every fusion it tries
    try:
        optimizer = optimize_model(
            str(source),
            model_type="bert",
            num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(config, "hidden_size", 0) or 0),
        )
        if not optimizer.get_fused_operator_statistics().get("Attention"):
            return None
        optimizer.save_model_to_file(str(target))
    finally:
        quiet.setLevel(level)
    return target


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
