"""Device, dtype and batch-limit choices: pure logic, tested without a GPU."""

from __future__ import annotations

import pytest

from batchsent.errors import UsageError
from batchsent.runtime.device import (
    CPU_LIMITS,
    CUDA_LIMITS,
    activation_bytes_per_token,
    batch_limits,
    check_batch_options,
    check_device_name,
    host_memory,
    model_widths,
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


def test_host_memory_is_the_lower_of_the_machine_and_its_container(tmp_path):
    import os

    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    (tmp_path / "v2").write_text("max\n")
    (tmp_path / "v1").write_text(f"{2**30}\n")
    assert host_memory((str(tmp_path / "v2"),)) == machine  # no limit
    assert host_memory((str(tmp_path / "missing"), str(tmp_path / "v1"))) == min(machine, 2**30)
    (tmp_path / "v1").write_text(f"{2**62}\n")  # v1's "no limit" is a huge number
    assert host_memory((str(tmp_path / "v1"),)) == machine


def _configs():
    from transformers import BertConfig, DistilBertConfig, GPT2Config, LlamaConfig, T5Config

    return {
        # (config, feed-forward width as the family names it)
        "bert": (BertConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536), 1536),
        "distilbert": (DistilBertConfig(dim=768, n_heads=12, hidden_dim=3072), 3072),
        "t5": (T5Config(d_model=512, num_heads=8, d_ff=2048), 2048),
        "gpt2": (GPT2Config(n_embd=256, n_head=4), 4 * 256),  # n_inner None: 4 x hidden
        "llama": (LlamaConfig(hidden_size=256, num_attention_heads=4, intermediate_size=688), 688),
    }


@pytest.mark.parametrize("family", ["bert", "distilbert", "t5", "gpt2", "llama"])
def test_activation_estimate_reads_each_familys_widths(family):
    config, feed_forward = _configs()[family]
    hidden, heads = config.hidden_size, config.num_attention_heads
    elements = 2 * heads * 512 + 2 * feed_forward + 6 * hidden
    assert model_widths(config) == (hidden, heads, feed_forward)
    assert activation_bytes_per_token(model_widths(config), 512, "float32") == 4 * elements
    assert activation_bytes_per_token(model_widths(config), 512, "bfloat16") == 2 * elements


def test_a_config_without_the_usual_widths_is_not_bounded():
    from transformers import PretrainedConfig

    assert model_widths(PretrainedConfig()) is None
    check_batch_options(10**18, 10**18, None, 512, "float32", resolve_device("cpu"))


def test_batch_options_are_bounded_by_this_machines_memory():
    widths = model_widths(_configs()["bert"][0])
    cpu = resolve_device("cpu")
    budget_most = host_memory() // activation_bytes_per_token(widths, 512, "float32")
    rows_most = host_memory() // activation_bytes_per_token(widths, 1, "float32")
    check_batch_options(rows_most, budget_most, widths, 512, "float32", cpu)
    check_batch_options(None, None, widths, 512, "float32", cpu)
    with pytest.raises(UsageError, match=rf"^--token-budget {budget_most + 1}: .* give at most {budget_most}$"):
        check_batch_options(None, budget_most + 1, widths, 512, "float32", cpu)
    with pytest.raises(UsageError, match=rf"^--batch-size {rows_most + 1}: .*single token.* at most {rows_most}$"):
        check_batch_options(rows_most + 1, None, widths, 512, "float32", cpu)
    # half-width activations fit twice the tokens; a shorter --max-length fits more too
    check_batch_options(None, 2 * budget_most - 1, widths, 512, "bfloat16", cpu)
    check_batch_options(None, budget_most + 1, widths, 128, "float32", cpu)


def test_devices_are_written_as_torch_writes_them():
    import torch

    from batchsent.runtime.device import Device

    assert resolve_device("cpu") == Device("cpu") and str(Device("cpu")) == str(torch.device("cpu"))
    assert str(Device("cuda", 1)) == str(torch.device("cuda:1")) and str(Device("cuda")) == str(torch.device("cuda"))
    assert resolve_device("auto", cuda_usable=False) == Device("cpu")


def test_threads_reach_torch_when_torch_runs(binary_model):
    import torch

    from batchsent.model.classifier import Classifier

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        Classifier(str(binary_model), device="cpu", threads=1, backend="torch").predict(["fine"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


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


def test_cuda_is_ruled_out_without_torch_only_where_it_cannot_be_there(tmp_path):
    from batchsent.runtime.device import cuda_impossible

    node = tmp_path / "nvidia0"
    assert "CPU-only build" in cuda_impossible("2.13.0+cpu", "Linux", (str(node),))
    assert "CPU-only build" in cuda_impossible("2.1.0+cpu.cxx11.abi", "Linux", (str(node),))
    assert "macOS" in cuda_impossible("2.13.0", "Darwin", (str(node),))
    assert "no GPU device node" in cuda_impossible("2.13.0+cu128", "Linux", (str(tmp_path / "nvidia*"),))
    node.write_text("")
    assert cuda_impossible("2.13.0+cu128", "Linux", (str(tmp_path / "nvidia*"),)) is None  # torch must tell
    assert cuda_impossible("2.13.0+rocm6.4", "Windows", ()) is None
