"""Every model family through every path, against transformers.pipeline on the same tiny seeded model.

The default path equals the pipeline (1e-5); an ONNX export equals it within 1e-4 or is refused
in one line and not cached; ``--quantize int8`` (which ``--precision fast`` runs where it measures
fastest) quantizes what its variant says. Texts include
what breaks families that read special tokens: a literal ``</s>`` (an HTML strikethrough).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import varied_texts
from families import FAMILIES, LABELS, build_family_model

from batchsent.errors import ModelLoadError
from batchsent.model.classifier import Classifier

TEXTS = [
    *varied_texts(30, seed=3, longest_words=150),
    "<s>old price</s> now cheaper",
    "a </s> b </s> c",
    "the best film",
    "not good",
]
TOLERANCE = 1e-5


def pipeline_probabilities(model_dir, texts: list[str], **options) -> np.ndarray:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model_dir), device="cpu")
    results = classify(texts, truncation=True, top_k=None, batch_size=1, **options)
    return np.array([[{r["label"]: r["score"] for r in row}[label] for label in LABELS] for row in results])


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, tuple]:
    """Each family's model folder and the pipeline's probabilities on TEXTS."""
    root = tmp_path_factory.mktemp("families")
    built = {}
    for family in FAMILIES:
        folder = build_family_model(root / family, family, varied_texts(200, seed=1))
        built[family] = (folder, pipeline_probabilities(folder, TEXTS))
    return built


def assert_matches(got: np.ndarray, reference: np.ndarray, tolerance: float) -> None:
    np.testing.assert_allclose(got, reference, rtol=0, atol=tolerance)
    top = np.sort(reference, axis=1)[:, -2:]
    decided = (top[:, 1] - top[:, 0]) > 2 * tolerance
    assert (got.argmax(1) == reference.argmax(1))[decided].all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("batch_size", "token_budget"), [(64, 8192), (7, 256)])
def test_the_default_path_matches_the_pipeline(families, family, batch_size, token_budget):
    folder, reference = families[family]
    classifier = Classifier(str(folder), device="cpu", batch_size=batch_size, token_budget=token_budget)
    assert_matches(classifier.predict(TEXTS).probabilities, reference, TOLERANCE)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_matches_the_pipeline_or_is_refused_uncached(families, family, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from batchsent.runtime import backends

    monkeypatch.setenv("BATCHSENT_ONNX_CACHE", str(tmp_path / "onnx"))
    folder, reference = families[family]
    if (
        family == "longformer"
    ):  # its sliding-window attention traces to a graph that is right only for the traced shapes
        with pytest.raises(ModelLoadError, match=r"(differs from torch by .*|fails) on inputs of other lengths"):
            Classifier(str(folder), device="cpu", backend="onnx")
        assert not list(backends.onnx_cache_root().rglob("*.onnx"))
        return
    classifier = Classifier(str(folder), device="cpu", backend="onnx")
    assert classifier.variant == "onnx float32"
    assert classifier.fused == (family in backends.FUSABLE)  # BERT and RoBERTa: attention fused, still 1e-4
    assert_matches(classifier.predict(TEXTS).probabilities, reference, 1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_quantizes_what_it_says(families, family):
    import torch
    from transformers.pytorch_utils import Conv1D

    from batchsent.runtime.cpu import this_cpu

    if this_cpu().int8_kernel is None:
        pytest.skip(f"this CPU has no int8 kernel batchsent uses: {this_cpu().describe()}")
    folder, reference = families[family]
    classifier = Classifier(str(folder), device="cpu", quantize="int8")
    assert classifier.variant.startswith("int8/"), classifier.variant
    base = classifier.model.base_model
    pooler = getattr(base, "pooler", None)
    pooler = {id(m) for m in pooler.modules()} if isinstance(pooler, torch.nn.Module) else set()
    left = [
        name for name, m in base.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and id(m) not in pooler
    ]
    assert not left, f"left in float32 but named int8: {left}"
    got = classifier.predict(TEXTS).probabilities
    assert np.isfinite(got).all()
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.8  # random tiny weights have many near-ties


def test_a_roberta_tokenizer_without_a_length_limit_stops_where_the_positions_end(tmp_path):
    folder = build_family_model(tmp_path / "roberta", "roberta", varied_texts(200, seed=1), max_length=None)
    classifier = Classifier(str(folder), device="cpu")
    assert classifier.max_length == 128  # 130 positions, numbered from padding_idx + 1 = 2
    scores = classifier.predict(TEXTS)
    assert scores.truncated.any()
    assert_matches(scores.probabilities, pipeline_probabilities(folder, TEXTS, max_length=128), TOLERANCE)


def test_split_special_tokens_in_the_tokenizer_config_is_kept(tmp_path):
    folder = build_family_model(tmp_path / "bert", "bert", varied_texts(200, seed=1), split_special_tokens=True)
    texts = ["a row that holds </s> and <s> as text", "<pad> <mask> <unk>", "plain text"]
    classifier = Classifier(str(folder), device="cpu")
    assert_matches(classifier.predict(texts).probabilities, pipeline_probabilities(folder, texts), TOLERANCE)


def test_onnx_without_the_onnx_package_is_refused_before_loading(monkeypatch):
    import importlib.util

    from batchsent.errors import UsageError
    from batchsent.settings.options import ModelOptions

    pytest.importorskip("onnxruntime")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "onnx" else real(name, *rest))
    with pytest.raises(UsageError, match="--backend onnx needs onnx to export the model"):
        ModelOptions(backend="onnx")
