"""Device, dtype and batch-limit choices: pure logic, tested without a GPU."""

from __future__ import annotations

import pytest

from batchsent.errors import UsageError
from batchsent.runtime.device import (
    CPU_LIMITS,
    CUDA_LIMITS,
    batch_limits,
    check_device_name,
    resolve_device,
    resolve_dtype,
)


@pytest.mark.parametrize(
    ("dtype", "device", "expected"),
    [
        ("auto", "cuda", "float16"),
        ("auto", "cpu", "float32"),
        ("auto", "mps", "float32"),
        ("bfloat16", "cpu", "bfloat16"),
        ("float16", "cuda", "float16"),
        ("float32", "cuda", "float32"),
    ],
)
def test_dtype_resolution(dtype, device, expected):
    assert resolve_dtype(dtype, device) == expected


def test_float16_is_refused_on_cpu():
    with pytest.raises(UsageError, match="--dtype float16 needs a CUDA device"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(UsageError, match="--dtype 'int4'"):
        resolve_dtype("int4", "cpu")


def test_batch_limits_are_sized_per_device():
    assert batch_limits("cpu") == CPU_LIMITS and batch_limits("cuda") == CUDA_LIMITS
    assert CUDA_LIMITS.tokens > CPU_LIMITS.tokens and CUDA_LIMITS.rows > CPU_LIMITS.rows
    assert batch_limits("cuda", "bfloat16") == CUDA_LIMITS


@pytest.mark.parametrize(
    ("flags", "expected"), [("avx2 avx512f avx512_bf16 amx_tile amx_bf16", 4096), ("avx2 avx512_bf16", 1024)]
)
def test_cpu_bfloat16_takes_larger_batches_only_on_amx(monkeypatch, flags, expected):
    from batchsent.runtime import cpu

    monkeypatch.setenv(cpu.FLAGS_ENV, flags)
    cpu.this_cpu.cache_clear()
    try:
        assert batch_limits("cpu", "bfloat16").tokens == expected
        assert batch_limits("cpu", "float32") == CPU_LIMITS
    finally:
        monkeypatch.delenv(cpu.FLAGS_ENV)
        cpu.this_cpu.cache_clear()


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_names_accepted(name):
    check_device_name(name)


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_device_names_refused(name):
    with pytest.raises(UsageError):
        check_device_name(name)


def test_cuda_without_cuda_is_a_usage_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match="no CUDA device is available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_bfloat16_on_cpu_runs_and_agrees_roughly(binary_model):
    import numpy as np
    from conftest import varied_texts

    from batchsent.model.classifier import Classifier
    from batchsent.runtime.cpu import this_cpu

    if not this_cpu().native_bf16:
        pytest.skip(f"this CPU has no native bfloat16 (its refusal: test_backends.py): {this_cpu().describe()}")

    texts = varied_texts(20, seed=5)
    exact = Classifier(str(binary_model), device="cpu").predict(texts).probabilities
    half = Classifier(str(binary_model), device="cpu", dtype="bfloat16").predict(texts).probabilities
    assert half.dtype == np.float32
    assert np.abs(exact - half).max() < 0.05
