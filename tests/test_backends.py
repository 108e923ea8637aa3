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


def test_a_cached_export_runs_without_the_torch_model_and_a_folder_without_its_capacity_is_exported_again(
    binary_model,
):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys
        from batchsent.model.classifier import Classifier
        classifier = Classifier(sys.argv[1], device="cpu", backend="onnx", quantize="int8")
        classifier.predict(["a first review", "and a second, longer one"])
        modeling = "transformers.models.distilbert.modeling_distilbert" in sys.modules
        imported = "transformers" in sys.modules, "torch" in sys.modules
        print(classifier.exported, modeling, *imported, classifier._capacity, classifier.model is None)
        """
    )

    def run() -> list[str]:
        done = subprocess.run([sys.executable, "-c", script, str(binary_model)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    # exported: the model was loaded (and let go once ONNX Runtime held the graph); cached: it never was
    assert run() == ["True", "True", "True", "True", "512", "True"]
    # nor was transformers imported (a kept setup), nor torch: ONNX Runtime alone scores on the CPU
    assert run() == ["False", "False", "False", "False", "512", "True"]
    (meta,) = backends.onnx_cache_root().rglob(backends.EXPORT_META)
    meta.unlink()  # as a run killed between the graph and its capacity leaves the folder
    assert run() == ["True", "True", "True", "True", "512", "True"]


def operator_types(path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("model_type", sorted(backends.FUSABLE))
def test_every_fusable_type_exports_fused_attention_close_to_torch_on_other_shapes(model_type):
    import torch
    from conftest import padded_batch, tiny_config
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type)).eval()
    rng = np.random.default_rng(0)
    sample, checks = padded_batch(rng, 2, 7), [padded_batch(rng, 3, 20), padded_batch(rng, 1, 5)]
    names = list(sample)
    graph = backends.onnx_model({"model": f"tiny/{model_type}"}, names, None, lambda: (model, sample, checks, 40))
    assert graph.fused and graph.exported and graph.path.name == backends.FUSED and graph.capacity == 40
    assert {"Attention", "SkipLayerNormalization"} <= operator_types(graph.path)
    assert not (graph.path.parent / backends.PLAIN).exists()
    runner = backends.OnnxRunner(graph.path, torch.device("cpu"), None)
    for rows, width in [(1, 2), (9, 33), (16, 128)]:
        inputs = padded_batch(rng, rows, width)
        with torch.inference_mode():
            expected = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
        np.testing.assert_allclose(runner(inputs), expected, rtol=0, atol=backends.EXPORT_TOLERANCE)
    assert model.config._attn_implementation == "sdpa"  # the model itself runs as it did before the export


def test_int8_weights_of_the_fused_graph_have_one_scale_per_channel(binary_model):
    import onnx
    from onnx import numpy_helper

    classifier = Classifier(str(binary_model), device="cpu", backend="onnx", quantize="int8")
    path = classifier._runner.session._model_path
    assert classifier.fused and path.endswith("model.fused.int8.onnx")
    assert classifier.variant == "onnx int8/per-channel"
    graph = onnx.load(path).graph
    initial = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # MatMulInteger's 4th input and QAttention's 5th: the weight's zero points, and its scales
    per_weight = [initial[n.input[3]] for n in graph.node if n.op_type == "MatMulInteger"]
    per_weight += [initial[n.input[4]] for n in graph.node if n.op_type == "QAttention"]
    assert {"QAttention", "MatMulInteger"} <= {n.op_type for n in graph.node}
    assert per_weight and all(values.size > 1 for values in per_weight)


def test_a_fused_graph_that_fails_its_check_leaves_the_plain_export_and_is_not_tried_again(binary_model, monkeypatch):
    real_check = backends._check_export
    checked = []

    def fail_the_fused_graph(model, path, checks):
        checked.append(path)
        if len(checked) == 1:
            raise backends.ModelLoadError("differs from torch")
        real_check(model, path, checks)

    monkeypatch.setattr(backends, "_check_export", fail_the_fused_graph)
    first = Classifier(str(binary_model), device="cpu", backend="onnx")
    assert first.exported and not first.fused and len(checked) == 2
    assert [p.name for p in backends.onnx_cache_root().rglob("*.onnx")] == [backends.PLAIN]
    monkeypatch.setattr(backends, "_fused_export", lambda *args: pytest.fail("fusion tried again"))
    again = Classifier(str(binary_model), device="cpu", backend="onnx")
    assert not again.exported and not again.fused
    texts = varied_texts(12, seed=3)
    assert again.predict(texts).probabilities.tobytes() == first.predict(texts).probabilities.tobytes()


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

    from batchsent.runtime import device
    from batchsent.runtime.device import resolve_device

    def auto_device(backend, quantize):  # as the Classifier resolves --device auto
        usable = backends.device_refusal(backend, quantize, "cuda") is None
        return resolve_device("auto", cuda_usable=usable).type

    monkeypatch.setattr(device, "cuda_impossible", lambda: None)  # only torch can tell: it is asked
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
