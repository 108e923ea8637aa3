"""The torch backend's int8: the arithmetic of Int8Linear and which layers it replaces."""

from __future__ import annotations

import pytest
import torch
from conftest import varied_texts

from batchsent import int8
from batchsent.errors import UsageError
from batchsent.model import Classifier


def reference(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The same quantization written plainly: fake-quantize both operands, multiply in float64."""
    w = linear.weight.double()
    w_step = w.abs().amax(1, keepdim=True) / 127
    w_q = torch.round(w / w_step) * w_step
    rows = x.reshape(-1, x.shape[-1]).double()
    low, high = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
    step = (high - low) / 255
    x_q = torch.round((rows - low) / step) * step + low
    return (x_q @ w_q.T + linear.bias.double()).reshape(*x.shape[:-1], -1)


def test_int8_linear_computes_the_per_token_per_channel_quantized_product():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    x = torch.randn(3, 7, 96)
    result = int8.Int8Linear(linear)(x)
    assert result.shape == (3, 7, 40) and result.dtype == torch.float32
    torch.testing.assert_close(result.double(), reference(linear, x), rtol=0, atol=2e-5)
    assert (result - linear(x)).abs().max() < 0.05  # and close to the float layer


def test_an_outlier_token_does_not_coarsen_the_others():
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 16)
    x = torch.randn(8, 64)
    alone = int8.Int8Linear(linear)(x)
    x_with_outlier = torch.cat([x, 1000 * torch.randn(1, 64)])
    together = int8.Int8Linear(linear)(x_with_outlier)
    torch.testing.assert_close(together[:8], alone, rtol=0, atol=1e-6)
    assert (alone - linear(x)).abs().max() < 0.02


def test_constant_token_and_layer_without_bias():
    linear = torch.nn.Linear(32, 4, bias=False)
    x = torch.full((2, 32), 0.25)
    torch.testing.assert_close(int8.Int8Linear(linear)(x), linear(x), rtol=0, atol=2e-3)


@pytest.mark.parametrize("kind", ["binary", "three"])
def test_encoder_layers_are_replaced_and_the_head_is_not(tiny_models, kind):
    classifier = Classifier(str(tiny_models[kind]), device="cpu", quantize="int8")
    model = classifier.model
    base = model.base_model
    encoder_linears = [m for m in base.modules() if isinstance(m, int8.Int8Linear)]
    layers = model.config.num_hidden_layers if kind == "three" else model.config.n_layers
    assert len(encoder_linears) == 6 * layers  # q, k, v, attention out, FFN in, FFN out
    floats = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert floats and all(not name.startswith(base.base_model_prefix) or ".pooler" in name for name in floats)
    exact = Classifier(str(tiny_models[kind]), device="cpu").predict(varied_texts(20, seed=3)).probabilities
    quantized = classifier.predict(varied_texts(20, seed=3)).probabilities
    assert abs(quantized - exact).max() < 0.05


def test_int8_is_refused_where_torch_lacks_the_int8_product(monkeypatch):
    monkeypatch.setattr(int8, "int8_matmul_available", lambda: False)
    with pytest.raises(UsageError, match="--quantize int8 needs torch's int8 matrix product"):
        Classifier("never-loaded", quantize="int8")
