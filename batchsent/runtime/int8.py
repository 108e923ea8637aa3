"""Dynamic int8 for the torch backend: per-channel int8 weights, per-token int8 activations.

Each Linear layer of the encoder becomes an int8 product between weights quantized once
per output channel (symmetric) and activations quantized per token as they arrive
(asymmetric: each token's own minimum and maximum). The classification head and pooler
stay float32: they see one row per text, so they cost nothing and keep the last step exact.

Two kernels compute the same arithmetic; ``this_cpu().int8_kernel`` picks the one that is
fast on the CPU at hand (see ``runtime.cpu``):

- ``Int8Linear`` (CPUs with VNNI or AMX): ``torch._int_mm``, int8 x int8 -> int32.
- ``FbgemmInt8Linear`` (AVX2 without VNNI, where ``_int_mm`` crawls): fbgemm's dynamic
  quantized Linear. It gives the whole input one activation scale, so each token is first
  mapped onto [0, 1] with its own minimum and range and mapped back after the product:
  one scale over normalised tokens is a per-token scale. fbgemm's 7-bit activation range
  (``reduce_range``) keeps AVX2's 16-bit pair sums from saturating.

Why not ``torch.ao.quantization.quantize_dynamic`` as it is: one scale over the raw padded
batch lets one outlier token coarsen every other token; its labels agreed with float32 on
93% of the review mix, per-token scales on 99.7% (``make bench``).
"""

from __future__ import annotations

import functools
import warnings
from types import SimpleNamespace
from typing import Any

import torch

from batchsent.errors import UsageError
from batchsent.runtime.cpu import CpuInfo

_LEVELS = 255  # asymmetric activations: 256 levels, shifted by 128 into int8
KERNELS = ("int_mm", "fbgemm")


@functools.cache
def int8_matmul_available() -> bool:
    """Whether this torch computes exact int8 x int8 -> int32 products on the CPU.

    Checked on full-range random operands against exact integer arithmetic: with oneDNN
    limited below VNNI (``ONEDNN_MAX_CPU_ISA=AVX2`` on a VNNI CPU), ``_int_mm`` returns
    wrong sums (16-bit pair sums saturate), and a probe of small values would not notice.
    """
    int_mm = getattr(torch, "_int_mm", None)
    if int_mm is None:
        return False
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (32, 64), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 128, (64, 48), dtype=torch.int8, generator=generator)
    try:
        return bool(torch.equal(int_mm(a, b), (a.double() @ b.double()).to(torch.int32)))
    except RuntimeError:
        return False


@functools.cache
def fbgemm_available() -> bool:
    """Whether this torch has fbgemm's quantized Linear and the per-channel weights it packs (x86 builds).

    torch marks quantized tensors deprecated; once they are gone this turns False and int8
    is refused on CPUs without VNNI rather than failing at load.
    """
    try:
        return (
            "fbgemm" in torch.backends.quantized.supported_engines
            and hasattr(torch, "quantize_per_channel")
            and hasattr(torch.ops.quantized, "linear_prepack")
            and hasattr(torch.ops.quantized, "linear_dynamic")
        )
    except (AttributeError, RuntimeError):
        return False


def choose_kernel(cpu: CpuInfo) -> str:
    """The int8 kernel to use on ``cpu``, or a UsageError saying why int8 would not be faster here."""
    kernel = cpu.int8_kernel
    if kernel is None:
        need = "AVX2 (x86)" if cpu.is_x86 else "an x86 CPU with VNNI/AMX or AVX2"
        raise UsageError(
            f"--quantize int8 would be slower than float32 on this CPU ({cpu.model}): it needs {need}; "
            "use --precision fast, or float32"
        )
    if kernel == "int_mm" and not int8_matmul_available():
        if fbgemm_available():
            return "fbgemm"  # the VNNI kernel is missing or inexact here (an oneDNN ISA limit): fbgemm is exact
        raise UsageError(
            f"--quantize int8 needs torch's int8 matrix product on CPU, missing or inexact in torch {torch.__version__}"
        )
    if kernel == "fbgemm" and not fbgemm_available():
        raise UsageError(
            f"--quantize int8 on an AVX2 CPU needs torch's fbgemm engine, absent from torch {torch.__version__}"
        )
    return kernel


def check_kernel(kernel: str) -> None:
    """Refuse an int8 kernel asked for by name that this torch cannot run exactly."""
    if kernel not in KERNELS:
        raise UsageError(f"int8 kernel {kernel!r}: expected {' or '.join(KERNELS)}")
    if kernel == "int_mm" and not int8_matmul_available():
        raise UsageError("the int_mm kernel needs torch's int8 matrix product on CPU, missing or inexact here")
    if kernel == "fbgemm" and not fbgemm_available():
        raise UsageError(f"the fbgemm kernel needs torch's fbgemm engine, absent from torch {torch.__version__}")


class Int8Linear(torch.nn.Module):
    """A Linear layer computed in int8: ``y = W x + b`` with W per-channel, x per-token quantized."""

    weight_t: torch.Tensor
    weight_scale: torch.Tensor
    weight_sum: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        quantized = torch.round(weight / scale[:, None]).to(torch.int8)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight_t", quantized.t())  # (in, out) view of the (out, in) rows
        self.register_buffer("weight_scale", scale)
        # Row sums of the dequantized weights: the zero-point term of asymmetric activations.
        self.register_buffer("weight_sum", (quantized.float() * scale[:, None]).sum(dim=1))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        low = rows.amin(dim=1, keepdim=True)
        step = (rows.amax(dim=1, keepdim=True) - low).clamp_(min=1e-12).div_(_LEVELS)
        # x ~= step * (q + 128) + low, with q in [-128, 127]
        quantized = (rows - low).div_(step).round_().sub_(128).to(torch.int8)
        y = torch._int_mm(quantized, self.weight_t).to(torch.float32)
        y.mul_(self.weight_scale).mul_(step)
        if self.bias is not None:
            y.add_(self.bias)
        y.addr_(low.add_(step, alpha=128).squeeze(1), self.weight_sum)
        return y.reshape(*x.shape[:-1], self.out_features)


class FbgemmInt8Linear(torch.nn.Module):
    """The same per-channel/per-token product through fbgemm: ``y = range * (W x01) + low * sum(W) + b``."""

    weight_sum: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12).double() / 127
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are marked deprecated; fbgemm still takes them
            quantized = torch.quantize_per_channel(weight, scale, zero_points, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(quantized, None)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight_sum", quantized.dequantize().sum(dim=1))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        low = rows.amin(dim=1, keepdim=True)
        span = (rows.amax(dim=1, keepdim=True) - low).clamp_(min=1e-12)
        unit = (rows - low).div_(span)  # every token on [0, 1]: fbgemm's one scale is now per token
        y = _unit_product(unit, self._packed)
        y.mul_(span)
        if self.bias is not None:
            y.add_(self.bias)
        y.addr_(low.squeeze(1), self.weight_sum)
        return y.reshape(*x.shape[:-1], self.out_features)


def _int8_weight(layer: Any) -> torch.Tensor:
    """What model code may ask of a quantized layer's ``weight``: its shape and the int8 dtype, no values
    (the float32 weights are gone). T5's feed-forward reads ``wo.weight.dtype`` and leaves int8 alone."""
    return torch.empty(layer.out_features, layer.in_features, dtype=torch.int8, device="meta")


Int8Linear.weight = property(_int8_weight)  # type: ignore[attr-defined]
FbgemmInt8Linear.weight = property(_int8_weight)  # type: ignore[attr-defined]


def _unit_product(unit: torch.Tensor, packed: Any) -> torch.Tensor:
    """fbgemm's product of [0, 1] activations, quantized to 7 bits (0..127), with the packed weights.

    The known range skips the min/max pass of the dynamic op (10-15% of its time at MiniLM shapes).
    """
    if _FIXED_SCALE_OP is not None:
        return _FIXED_SCALE_OP(unit, 1.0 / 127, 0, packed)
    return torch.ops.quantized.linear_dynamic(unit, packed, True)


_FIXED_SCALE_OP = getattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32", None)
LAYERS = {"int_mm": Int8Linear, "fbgemm": FbgemmInt8Linear}


def quantize_encoder_int8(model: Any, kernel: str = "int_mm") -> int:
    """Replace the encoder's Linear (and GPT-2's Conv1D) layers with the ``kernel``'s int8 layer in place;
    returns how many (0: the model has none, and runs float32).

    The encoder is ``model.base_model`` less its pooler; heads and the pooler see one row
    per text and stay float32.
    """
    layer: Any = LAYERS[kernel]  # called with a Linear, or a (weight, bias) namespace for GPT-2's Conv1D
    base = getattr(model, "base_model", model)
    keep = set()
    pooler = getattr(base, "pooler", None)
    if isinstance(pooler, torch.nn.Module):
        keep = {id(module) for module in pooler.modules()}
    replaced = 0
    from transformers.pytorch_utils import Conv1D

    for parent in list(base.modules()):
        if id(parent) in keep:
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, layer(child))
                replaced += 1
            elif isinstance(child, Conv1D):  # GPT-2's layers: y = x W + b with W stored (in, out)
                setattr(parent, name, layer(SimpleNamespace(weight=child.weight.t(), bias=child.bias)))
                replaced += 1
    return replaced
