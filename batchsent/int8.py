"""Dynamic int8 for the torch backend: per-channel int8 weights, per-token int8 activations.

Each Linear layer of the encoder becomes an int8 x int8 -> int32 matrix product
(``torch._int_mm``, VNNI on x86 CPUs) between weights quantized once per output channel
(symmetric) and activations quantized per token as they arrive (asymmetric: each token's
own minimum and maximum). The classification head stays float32: it sees one row per
text, so it costs nothing and keeps the last step exact.

Why not ``torch.ao.quantization.quantize_dynamic``: it gives each batch's activations a
single scale over the whole padded batch (and a 7-bit range on x86), so one outlier token
coarsens every other token. On the SST-2 fixture its labels agreed with float32 on 93% of
the review mix; per-token scales agree on 99.7% at about the same speed (``make bench``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

_LEVELS = 255  # asymmetric activations: 256 levels, shifted by 128 into int8


@functools.cache
def int8_matmul_available() -> bool:
    """Whether this torch computes int8 x int8 -> int32 products on the CPU."""
    int_mm = getattr(torch, "_int_mm", None)
    if int_mm is None:
        return False
    try:
        probe = torch.ones(2, 8, dtype=torch.int8)
        return bool((int_mm(probe, probe.t()) == 8).all())
    except RuntimeError:
        return False


class Int8Linear(torch.nn.Module):
    """A Linear layer computed in int8: ``y = W x + b`` with W per-channel, x per-token quantized."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        quantized = torch.round(weight / scale[:, None]).to(torch.int8)
        self.out_features = linear.out_features
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


def quantize_encoder_int8(model: Any) -> int:
    """Replace the encoder's Linear layers with Int8Linear in place; returns how many.

    The encoder is ``model.base_model`` less its pooler; heads and the pooler see one row
    per text and stay float32.
    """
    base = getattr(model, "base_model", model)
    keep = set()
    pooler = getattr(base, "pooler", None)
    if isinstance(pooler, torch.nn.Module):
        keep = {id(module) for module in pooler.modules()}
    replaced = 0
    for parent in list(base.modules()):
        if id(parent) in keep:
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, Int8Linear(child))
                replaced += 1
    return replaced
