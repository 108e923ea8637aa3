"""Kept traces (runtime.graphs): the first run traces a model, later runs load the trace, and every path scores
the same bytes as the transformers model itself; a trace that would differ is never kept."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from conftest import padded_batch, tiny_config, varied_texts

from batchsent.model.classifier import Classifier
from batchsent.runtime import graphs, info
from batchsent.runtime.cpu import this_cpu

TEXTS = [*varied_texts(40, seed=8), "great", "great", None, "  "]


@pytest.fixture
def model_copy(tmp_path, binary_model):
    """A private copy of the tiny DistilBERT: no trace of it is kept yet."""
    return shutil.copytree(binary_model, tmp_path / "model")


NATIVE_BF16 = pytest.mark.skipif(not this_cpu().native_bf16, reason="bfloat16 runs only where the CPU has it natively")
INT8 = pytest.mark.skipif(this_cpu().int8_kernel is None, reason="no int8 kernel faster than float32 on this CPU")


@pytest.mark.parametrize(
    "options",
    [{}, pytest.param({"dtype": "bfloat16"}, marks=NATIVE_BF16), pytest.param({"quantize": "int8"}, marks=INT8)],
    ids=["float32", "bfloat16", "int8"],
)
def test_traced_once_then_loaded_and_the_same_bytes_as_the_model(model_copy, monkeypatch, options):
    first = Classifier(str(model_copy), device="cpu", **options)
    traced = first.predict(TEXTS).probabilities
    later = Classifier(str(model_copy), device="cpu", **options)
    loaded = later.predict(TEXTS).probabilities
    monkeypatch.setenv("BATCHSENT_GRAPHS", "off")
    plain = Classifier(str(model_copy), device="cpu", **options)
    eager = plain.predict(TEXTS).probabilities
    assert (first.graph, later.graph, plain.graph) == ("traced", "loaded", None)
    (said,) = [line for line in info.render(info.collect()) if line.startswith("kept traces")]
    assert str(graphs.graph_folder()) in said and said.endswith("; off (BATCHSENT_GRAPHS)")
    assert later.model is None  # the transformers model was never built
    assert traced.tobytes() == loaded.tobytes() == eager.tobytes()
    assert later.variant == plain.variant  # an int8 trace is int8: the variant says what ran


def test_each_variant_keeps_a_trace_of_its_own():
    identity, names = {"files": {"config.json": "abc"}}, ["input_ids", "attention_mask"]
    float32 = graphs.graph_key(identity, names, "float32")
    assert float32 == graphs.graph_key(identity, names)  # float32 keys are those kept before other variants'
    keys = {
        graphs.graph_key(identity, names, "bfloat16"),
        graphs.graph_key(identity, names, "float32", "int_mm"),
        graphs.graph_key(identity, names, "float32", "fbgemm"),
    }
    assert len(keys) == 3 and float32 not in keys


def test_a_kept_trace_and_setup_spare_the_import_of_transformers(model_copy, tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from batchsent.model.classifier import Classifier
        classifier = Classifier(sys.argv[1], device="cpu")
        classifier.predict(["a first review", "and a second, longer one"])
        print(classifier.graph, "transformers.models.distilbert.modeling_distilbert" in sys.modules,
              "transformers" in sys.modules)
        """
    )
    env = {**os.environ, "BATCHSENT_STATE_DIR": str(tmp_path / "state")}
    runs = [
        subprocess.run([sys.executable, "-c", script, str(model_copy)], capture_output=True, text=True, env=env)
        for _ in range(2)
    ]
    # the second run reads the kept setup (model.setup) too: transformers is not imported at all
    assert [run.stdout.split() for run in runs] == [["traced", "True", "True"], ["loaded", "False", "False"]], runs[
        -1
    ].stderr


def test_a_damaged_trace_is_traced_again(model_copy):
    first = Classifier(str(model_copy), device="cpu")
    expected = first.predict(TEXTS).probabilities
    (graphs.graph_folder() / first._graph_key / "graph.pt").write_bytes(b"not a TorchScript archive")
    again = Classifier(str(model_copy), device="cpu")
    assert again.graph == "traced"
    assert again.predict(TEXTS).probabilities.tobytes() == expected.tobytes()


def test_a_changed_model_is_traced_again(model_copy):
    Classifier(str(model_copy), device="cpu")
    config = model_copy / "config.json"
    config.write_text(config.read_text().replace('"NEGATIVE"', '"BAD"'))
    changed = Classifier(str(model_copy), device="cpu")
    assert changed.graph == "traced" and "BAD" in changed.labels


class ShapeBranch(torch.nn.Module):
    """A classifier whose forward takes a Python branch on the batch's length, which a trace freezes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 2)

    def forward(self, input_ids, attention_mask, return_dict=True):
        logits = self.embed(input_ids).mean(1)
        if input_ids.shape[1] > 4:
            logits = logits * 2
        return type("Output", (), {"logits": logits})()


def test_a_trace_that_differs_from_the_model_is_not_kept():
    example = {"input_ids": np.ones((2, 3), np.int64), "attention_mask": np.ones((2, 3), np.int64)}
    longer = {"input_ids": np.ones((2, 9), np.int64), "attention_mask": np.ones((2, 9), np.int64)}
    assert graphs.trace_graph(ShapeBranch(), example, [example], "branch-a", None) is not None  # same shape: equal
    assert graphs.trace_graph(ShapeBranch(), example, [example, longer], "branch-b", None) is None
    assert graphs.load_graph("branch-b") is None and graphs.load_graph("branch-a") is not None


def int8_kernel_available(kernel: str) -> bool:
    from batchsent.runtime.int8 import fbgemm_available, int8_matmul_available

    return int8_matmul_available() if kernel == "int_mm" else fbgemm_available()


@pytest.mark.parametrize("variant", [*sorted(graphs.TRACED_DTYPES), "int8/int_mm", "int8/fbgemm"])
@pytest.mark.parametrize("model_type", sorted(graphs.TRACEABLE))
def test_every_traceable_type_traces_to_the_model_on_shapes_it_was_not_traced_on(model_type, variant):
    from transformers import AutoModelForSequenceClassification

    from batchsent.runtime.int8 import quantize_encoder_int8

    kernel = variant.removeprefix("int8/") if variant.startswith("int8/") else None
    if kernel is not None and not int8_kernel_available(kernel):
        pytest.skip(f"this torch cannot run the {kernel} kernel exactly here")
    torch.manual_seed(0)
    dtype = "float32" if kernel else variant
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type)).to(getattr(torch, dtype)).eval()
    if kernel is not None:
        assert quantize_encoder_int8(model, kernel)
    rng = np.random.default_rng(0)

    def batch(rows: int, width: int) -> dict[str, np.ndarray]:
        return padded_batch(rng, rows, width)

    graph = graphs.trace_graph(model, batch(2, 7), [batch(3, 20)], f"type-{model_type}-{variant}", None)
    assert graph is not None
    runner = graphs.GraphRunner(graph, ["input_ids", "attention_mask"])
    for rows, width in [(1, 1 + 1), (1, 127), (9, 33), (4, 5), (16, 128)]:
        inputs = batch(rows, width)
        with torch.inference_mode():
            expected = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.float().numpy()
        assert runner(inputs).tobytes() == expected.tobytes(), (model_type, variant, rows, width)


def test_only_torch_on_cpu_without_model_code_is_traced(monkeypatch):
    assert graphs.traceable("bert", False, "torch", "float32", None, "cpu")
    assert graphs.traceable("bert", False, "torch", "bfloat16", None, "cpu")
    assert graphs.traceable("bert", False, "torch", "float32", "int8", "cpu")
    assert not graphs.traceable("bert", False, "torch", "float16", None, "cpu")
    assert not graphs.traceable("bert", False, "onnx", "float32", "int8", "cpu")
    assert not graphs.traceable("bert", False, "onnx", "float32", None, "cpu")
    assert not graphs.traceable("bert", False, "torch", "float32", None, "cuda")
    assert not graphs.traceable("gpt2", False, "torch", "float32", None, "cpu")
    assert not graphs.traceable("bert", True, "torch", "float32", None, "cpu")  # code of its own (auto_map)
    monkeypatch.setenv("BATCHSENT_GRAPHS", "off")
    assert not graphs.traceable("bert", False, "torch", "float32", None, "cpu")


def test_keeping_a_trace_removes_traces_unused_for_a_month_and_partial_files_a_killed_run_left(model_copy):
    root = graphs.graph_folder()
    month_ago = time.time() - (graphs.UNUSED_DAYS + 1) * 86400
    stale, recent, killed = root / "stale", root / "recent", root / "killed"
    for folder in (stale, recent, killed):
        folder.mkdir(parents=True)
    for folder in (stale, recent):
        (folder / "graph.pt").write_bytes(b"x" * 100)
        (folder / "graph.json").write_text("{}")
    os.utime(stale / "graph.json", (month_ago, month_ago))
    old_partial, writing = killed / ".graph.pt.a.partial", killed / ".graph.pt.b.partial"
    old_partial.write_bytes(b"x" * 10)
    writing.write_bytes(b"x" * 10)  # another run writing its trace now
    hour_ago = time.time() - (graphs.PARTIAL_HOURS * 3600 + 60)
    os.utime(old_partial, (hour_ago, hour_ago))
    os.utime(recent / "graph.json", (hour_ago, hour_ago))

    first = Classifier(str(model_copy), device="cpu")  # keeps a new trace
    assert first.graph == "traced"
    assert not stale.exists() and (recent / "graph.pt").exists()
    assert not old_partial.exists() and writing.exists()
    later = Classifier(str(model_copy), device="cpu")
    assert later.graph == "loaded"  # and loading marks it used
    assert time.time() - (root / first._graph_key / "graph.json").stat().st_mtime < 60
