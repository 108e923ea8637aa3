"""Other precisions and ONNX Runtime: same tokenization, batching and post-processing."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import build_tiny_model, varied_texts

from batchsent.errors import UsageError
from batchsent.model.classifier import Classifier
from batchsent.runtime import backends
from batchsent.runtime.cpu import CpuInfo, this_cpu


@pytest.fixture(autouse=True)
def private_onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHSENT_ONNX_CACHE", str(tmp_path / "onnx-cache"))


@pytest.mark.parametrize("kind", ["binary", "three", "multi"])
def test_onnx_matches_torch_at_float32(tiny_models, kind):
    texts = varied_texts(30, seed=7)
    torch_scores = Classifier(str(tiny_models[kind]), device="cpu").predict(texts)
    onnx_scores = Classifier(str(tiny_models[kind]), device="cpu", backend="onnx").predict(texts)
    np.testing.assert_allclose(onnx_scores.probabilities, torch_scores.probabilities, rtol=0, atol=1e-4)


def test_export_is_cached_and_invalidated_when_the_model_changes(tmp_path):
    model_dir = build_tiny_model(tmp_path / "model", "binary", seed=1)
    first = Classifier(str(model_dir), device="cpu", backend="onnx")
    again = Classifier(str(model_dir), device="cpu", backend="onnx")
    assert first.exported and not again.exported
    assert len(list(backends.onnx_cache_root().iterdir())) == 1
    build_tiny_model(model_dir, "binary", seed=2)  # new weights in the same folder
    changed = Classifier(str(model_dir), device="cpu", backend="onnx")
    assert changed.exported
    assert len(list(backends.onnx_cache_root().iterdir())) == 2
    text = ["a film"]
    assert not np.allclose(first.predict(text).probabilities, changed.predict(text).probabilities)


@pytest.mark.parametrize(
    "options",
    [{"dtype": "bfloat16"}, {"quantize": "int8"}, {"backend": "onnx", "quantize": "int8"}],
    ids=["torch-bf16", "torch-int8", "onnx-int8"],
)
def test_each_variant_runs_and_stays_close_to_float32(binary_model, options):
    if options.get("dtype") == "bfloat16" and not this_cpu().native_bf16:
        pytest.skip(f"this CPU has no native bfloat16: {this_cpu().describe()}")
    if options == {"quantize": "int8"} and this_cpu().int8_kernel is None:
        pytest.skip(f"no int8 kernel faster than float32 on this CPU: {this_cpu().describe()}")
    texts = varied_texts(30, seed=8)
    exact = Classifier(str(binary_model), device="cpu").predict(texts).probabilities
    variant = Classifier(str(binary_model), device="cpu", **options).predict(texts).probabilities
    assert variant.shape == exact.shape and np.isfinite(variant).all()
    assert np.abs(variant - exact).max() < 0.1


@pytest.mark.slow
def test_int8_end_to_end_through_the_cli(tmp_path, binary_model):
    from typer.testing import CliRunner

    from batchsent.cli import app

    source = tmp_path / "in.csv"
    source.write_text("text\ngood\nbad\n")
    variants = [["--backend", "onnx"], ["--backend", "onnx", "--quantize", "int8"], ["--precision", "fast"]]
    if this_cpu().int8_kernel is not None:  # elsewhere torch int8 is refused (test_cpu.py)
        variants.append(["--quantize", "int8"])
    for args in variants:
        output = tmp_path / f"out-{'-'.join(args)}.csv"
        result = CliRunner().invoke(app, ["score", str(source), "--model", str(binary_model), "-o", str(output), *args])
        assert result.exit_code == 0, result.stderr
        assert output.read_text().count("\n") == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "tensorflow"}, "--backend 'tensorflow'"),
        ({"quantize": "int4"}, "--quantize 'int4'"),
        ({"backend": "onnx", "dtype": "bfloat16"}, "--backend onnx runs float32"),
        ({"quantize": "int8", "dtype": "bfloat16"}, "--quantize int8 starts from float32"),
    ],
)
def test_options_this_machine_cannot_honour(options, message):
    with pytest.raises(UsageError, match=message):
        Classifier("never-loaded", **options)


def test_onnx_without_onnxruntime_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(UsageError, match=r"pip install 'batchsent\[onnx\]'"):
        Classifier("never-loaded", backend="onnx")


def test_bf16_is_refused_where_the_cpu_lacks_it(binary_model, monkeypatch):
    import batchsent.runtime.device as device

    monkeypatch.setattr(device, "this_cpu", lambda: CpuInfo("AVX2 EPYC", "x86_64", frozenset({"avx2"})))
    with pytest.raises(UsageError, match=r"this CPU \(AVX2 EPYC\) has no native bfloat16"):
        Classifier(str(binary_model), device="cpu", dtype="bfloat16")


def test_onnx_on_a_device_onnxruntime_cannot_use_is_refused(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "needs onnxruntime-gpu" in backends.device_refusal("onnx", None, "cuda")
    assert "runs on cpu or cuda, not mps" in backends.device_refusal("onnx", None, "mps")
    assert backends.device_refusal("onnx", None, "cpu") is None


def test_auto_device_is_where_the_backend_can_run(monkeypatch):
    import onnxruntime
    import torch

    from batchsent.runtime.device import resolve_device

    def auto_device(backend, quantize):  # as the Classifier resolves --device auto
        usable = backends.device_refusal(backend, quantize, "cuda") is None
        return resolve_device("auto", cuda_usable=usable).type

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_device("torch", None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_device("torch", None) == "cuda"
    assert auto_device("torch", "int8") == "cpu"  # torch int8 runs on the CPU only
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert auto_device("onnx", None) == "cpu"
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert auto_device("onnx", "int8") == "cuda"


def test_cuda_attention_leaves_out_cudnn_and_cpu_keeps_torchs_choice():
    import contextlib

    import torch

    assert isinstance(backends.attention_kernels(torch.device("cpu")), contextlib.nullcontext)
    cuda = torch.backends.cuda
    with backends.attention_kernels(torch.device("cuda")):  # only sets torch's flags: no GPU needed
        assert not cuda.cudnn_sdp_enabled()
        assert cuda.flash_sdp_enabled() and cuda.mem_efficient_sdp_enabled() and cuda.math_sdp_enabled()
