"""The torch backend's int8: the arithmetic of both kernels, which layers they replace, which one a CPU gets."""

from __future__ import annotations

import pytest
import torch
from conftest import varied_texts

from batchsent.errors import UsageError
from batchsent.model.classifier import Classifier
from batchsent.runtime import int8
from batchsent.runtime.cpu import CpuInfo, this_cpu

needs_fbgemm = pytest.mark.skipif(not int8.fbgemm_available(), reason="this torch has no fbgemm engine (non-x86 build)")
needs_int_mm = pytest.mark.skipif(
    not int8.int8_matmul_available(), reason="torch._int_mm is missing or inexact here (oneDNN limited below VNNI?)"
)
KERNELS = [pytest.param("int_mm", marks=needs_int_mm), pytest.param("fbgemm", marks=needs_fbgemm)]
# Activation levels per token: _int_mm takes 8 bits, fbgemm 7 (its reduce_range), so fbgemm
# drifts about twice as far on the tiny random models (their weights are 10x a real model's).
LEVELS = {"int_mm": 255, "fbgemm": 127}
MODEL_DRIFT = {"int_mm": 0.05, "fbgemm": 0.1}


def reference(linear: torch.nn.Linear, x: torch.Tensor, levels: int) -> torch.Tensor:
    """The same quantization written plainly: fake-quantize both operands, multiply in float64."""
    w = linear.weight.double()
    w_step = w.abs().amax(1, keepdim=True) / 127
    w_q = torch.round(w / w_step) * w_step
    rows = x.reshape(-1, x.shape[-1])
    low, high = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
    unit = ((rows - low) / (high - low)).double()  # as the kernels compute it, in float32
    x_q = torch.round(unit * levels) / levels * (high - low).double() + low.double()
    bias = 0 if linear.bias is None else linear.bias.double()
    return (x_q @ w_q.T + bias).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_linear_computes_the_per_token_per_channel_quantized_product(kernel):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    x = torch.randn(3, 7, 96)
    result = int8.LAYERS[kernel](linear)(x)
    assert result.shape == (3, 7, 40) and result.dtype == torch.float32
    torch.testing.assert_close(result.double(), reference(linear, x, LEVELS[kernel]), rtol=0, atol=5e-5)
    assert (result - linear(x)).abs().max() < 0.1  # and close to the float layer


@pytest.mark.parametrize("kernel", KERNELS)
def test_an_outlier_token_does_not_coarsen_the_others(kernel):
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 16)
    x = torch.randn(8, 64)
    alone = int8.LAYERS[kernel](linear)(x)
    x_with_outlier = torch.cat([x, 1000 * torch.randn(1, 64)])
    together = int8.LAYERS[kernel](linear)(x_with_outlier)
    torch.testing.assert_close(together[:8], alone, rtol=0, atol=1e-5)
    assert (alone - linear(x)).abs().max() < 0.05


@pytest.mark.parametrize("kernel", KERNELS)
def test_constant_token_and_layer_without_bias(kernel):
    linear = torch.nn.Linear(32, 4, bias=False)
    x = torch.full((2, 32), 0.25)
    torch.testing.assert_close(int8.LAYERS[kernel](linear)(x), linear(x), rtol=0, atol=2e-3)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", ["binary", "three"])
def test_encoder_layers_are_replaced_and_the_head_is_not(tiny_models, kind, kernel, eager):
    classifier = Classifier(str(tiny_models[kind]), device="cpu")
    exact = classifier.predict(varied_texts(20, seed=3)).probabilities
    model = classifier.model
    int8.quantize_encoder_int8(model, kernel)  # the loaded model, in place, as --quantize int8 does
    base = model.base_model
    encoder_linears = [m for m in base.modules() if isinstance(m, int8.LAYERS[kernel])]
    layers = model.config.num_hidden_layers if kind == "three" else model.config.n_layers
    assert len(encoder_linears) == 6 * layers  # q, k, v, attention out, FFN in, FFN out
    floats = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert floats and all(not name.startswith(base.base_model_prefix) or ".pooler" in name for name in floats)
    quantized = classifier.predict(varied_texts(20, seed=3)).probabilities
    assert abs(quantized - exact).max() < MODEL_DRIFT[kernel]


@pytest.mark.parametrize(
    ("machine", "flags", "kernel"),
    [
        ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, "int_mm"),
        ("x86_64", {"avx2", "avx_vnni"}, "int_mm"),
        ("x86_64", {"avx2", "amx_tile", "amx_int8"}, "int_mm"),
        ("x86_64", {"avx2", "fma"}, "fbgemm"),
        ("x86_64", {"avx2", "avx512f", "avx512bw"}, "fbgemm"),  # AVX-512 without VNNI
        ("x86_64", {"avx", "sse4_2"}, None),
        ("aarch64", {"asimd", "asimddp"}, None),  # nothing measured faster there yet
    ],
)
def test_the_kernel_follows_the_cpu_flags(machine, flags, kernel):
    assert CpuInfo("cpu", machine, frozenset(flags)).int8_kernel == kernel


def test_int8_is_refused_in_one_line_where_it_would_be_slower(monkeypatch):
    import batchsent.runtime.backends as backends

    monkeypatch.setattr(backends, "this_cpu", lambda: CpuInfo("Old Xeon", "x86_64", frozenset({"avx", "sse4_2"})))
    with pytest.raises(UsageError, match=r"slower than float32 on this CPU \(Old Xeon\): it needs AVX2 \(x86\)"):
        Classifier("never-loaded", quantize="int8")
    monkeypatch.setattr(backends, "this_cpu", lambda: CpuInfo("Graviton", "aarch64", frozenset({"asimd"})))
    with pytest.raises(UsageError, match="needs an x86 CPU with VNNI/AMX or AVX2; use --precision fast"):
        Classifier("never-loaded", quantize="int8")


def test_int8_is_refused_where_torch_lacks_the_kernel(monkeypatch):
    import batchsent.runtime.backends as backends

    vnni = CpuInfo("EPYC", "x86_64", frozenset({"avx2", "avx512_vnni"}))
    monkeypatch.setattr(int8, "int8_matmul_available", lambda: False)
    monkeypatch.setattr(int8, "fbgemm_available", lambda: True)
    assert int8.choose_kernel(vnni) == "fbgemm"  # a missing or inexact _int_mm falls back to fbgemm
    monkeypatch.setattr(backends, "this_cpu", lambda: vnni)
    monkeypatch.setattr(int8, "fbgemm_available", lambda: False)
    with pytest.raises(
        UsageError, match="--quantize int8 needs torch's int8 matrix product on CPU, missing or inexact"
    ):
        Classifier("never-loaded", quantize="int8")
    monkeypatch.setattr(backends, "this_cpu", lambda: CpuInfo("EPYC", "x86_64", frozenset({"avx2"})))
    monkeypatch.setattr(int8, "fbgemm_available", lambda: False)
    with pytest.raises(UsageError, match="needs torch's fbgemm engine"):
        Classifier("never-loaded", quantize="int8")


def test_the_int_mm_probe_checks_exact_products():
    if int8.int8_matmul_available():
        a = torch.randint(-128, 128, (16, 32), dtype=torch.int8)
        assert torch.equal(torch._int_mm(a, a.t().contiguous()), (a.double() @ a.t().double()).to(torch.int32))


def test_the_classifier_uses_this_cpus_kernel(binary_model, monkeypatch):
    if this_cpu().int8_kernel is None:
        pytest.skip(f"int8 is refused on this CPU: {this_cpu().describe()}")
    kernel = int8.choose_kernel(this_cpu())
    classifier = Classifier(str(binary_model), device="cpu", quantize="int8")  # a kept trace (runtime.graphs)
    assert classifier.kernel == kernel and classifier.variant == f"int8/{kernel}"
    assert classifier.graph is not None
    layer = int8.LAYERS[kernel].__name__
    assert any(m.original_name == layer for m in classifier._runner.graph.modules())
    monkeypatch.setenv("BATCHSENT_GRAPHS", "off")
    eager = Classifier(str(binary_model), device="cpu", quantize="int8")
    assert any(isinstance(m, int8.LAYERS[kernel]) for m in eager.model.modules())
