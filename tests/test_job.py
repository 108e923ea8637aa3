"""The streaming job: prefetch order and bounds, and what batches the model really runs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import varied_texts

from batchsent.engine.local.job import _prefetched
from batchsent.model.batching import padded_tokens, plan_batches
from batchsent.model.classifier import Classifier


def test_prefetch_keeps_order():
    assert list(_prefetched(iter(range(100)), depth=2)) == list(range(100))


def test_prefetch_runs_at_most_depth_ahead():
    produced = []

    def items():
        for i in range(10):
            produced.append(i)
            yield i

    stream = _prefetched(items(), depth=1)
    assert next(stream) == 0
    time.sleep(0.3)
    # one item handed over, one waiting in the queue, one held by the blocked producer
    assert len(produced) <= 3
    stream.close()


def test_prefetch_raises_producer_errors_in_order():
    def items():
        yield 1
        raise ValueError("bad chunk")

    stream = _prefetched(items(), depth=1)
    assert next(stream) == 1
    with pytest.raises(ValueError, match="bad chunk"):
        next(stream)


def test_stopping_early_stops_the_producer():
    before = threading.active_count()
    stream = _prefetched(iter(range(1000)), depth=1)
    next(stream)
    stream.close()
    assert threading.active_count() == before


class CountingModel:
    """Wraps a model and records the shape of every batch it runs."""

    def __init__(self, model):
        self.model = model
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, **inputs):
        self.shapes.append(tuple(inputs["input_ids"].shape))
        return self.model(**inputs)


def test_a_text_repeated_in_one_call_runs_once_and_every_copy_gets_its_results(binary_model, eager):
    classifier = Classifier(str(binary_model), device="cpu")
    counting = CountingModel(classifier.model)
    classifier._runner.model = counting
    texts = ["great app", None, "great app", "awful", "great app ", "awful", "great app"]
    scores = classifier.predict(texts)
    assert sum(r for r, _ in counting.shapes) == 3  # "great app", "awful", "great app "
    assert scores.probabilities[2].tobytes() == scores.probabilities[0].tobytes() == scores.probabilities[6].tobytes()
    assert scores.probabilities[5].tobytes() == scores.probabilities[3].tobytes()
    assert np.isnan(scores.probabilities[1]).all() and scores.blank.tolist() == [0, 1, 0, 0, 0, 0, 0]
    alone = Classifier(str(binary_model), device="cpu").predict(["great app "]).probabilities[0]
    np.testing.assert_allclose(scores.probabilities[4], alone, atol=2e-6)


@pytest.mark.parametrize(("budget", "rows"), [(2048, 128), (300, 8), (1, 64)])
def test_the_model_runs_exactly_the_planned_batches(binary_model, budget, rows, eager):
    classifier = Classifier(str(binary_model), device="cpu", token_budget=budget, batch_size=rows)
    counting = CountingModel(classifier.model)
    classifier._runner.model = counting
    texts = varied_texts(50, seed=4)
    chunk = classifier.encode(texts)
    classifier.run(chunk)
    plan = plan_batches(chunk.lengths, budget, rows)
    assert counting.shapes == [(len(b), int(chunk.lengths[b].max())) for b in plan]
    for batch_rows, width in counting.shapes:
        assert batch_rows <= rows and (batch_rows * width <= budget or batch_rows == 1)
    assert sum(r for r, _ in counting.shapes) == len(set(texts))  # a repeated text runs once
    assert sum(r * w for r, w in counting.shapes) == padded_tokens(chunk.lengths, plan)


def test_defaults_come_from_the_device(binary_model):
    from batchsent.runtime.device import CPU_LIMITS

    classifier = Classifier(str(binary_model), device="cpu")
    assert (classifier.batch_size, classifier.token_budget) == (CPU_LIMITS.rows, CPU_LIMITS.tokens)
    assert classifier.dtype == "float32"
    assert np.isfinite(classifier.predict(["fine"]).probabilities).all()


def test_the_default_budget_follows_the_dtype_fast_chose(binary_model, monkeypatch):
    """``--precision fast`` learns its dtype from the tuning, after the options: the budget is that dtype's."""
    from batchsent.runtime import tuning
    from batchsent.runtime.cpu import this_cpu
    from batchsent.runtime.device import batch_limits

    if not this_cpu().native_bf16:
        pytest.skip(f"this CPU has no native bfloat16: {this_cpu().describe()}")
    stored = tuning.Tuning(scope={}, facts={}, sample="", measured_at="")
    monkeypatch.setattr(tuning.Tuning, "candidate", lambda self: tuning.Candidate("bfloat16", dtype="bfloat16"))
    monkeypatch.setattr(tuning, "fast_variant", lambda *args: stored)
    classifier = Classifier(str(binary_model), device="cpu", precision="fast")
    assert classifier.dtype == "bfloat16"
    assert classifier.token_budget == batch_limits("cpu", "bfloat16").tokens


def test_a_job_hands_the_classifier_exactly_its_model_options(binary_model):
    from dataclasses import fields
    from pathlib import Path

    from batchsent.settings.options import JobConfig, ModelOptions

    job = JobConfig(input=Path("x.csv"), model=str(binary_model), device="cpu", max_length=64, prefix="p_")
    assert job.model_options() == ModelOptions(model=str(binary_model), device="cpu", max_length=64)
    assert {f.name for f in fields(ModelOptions)} < {f.name for f in fields(JobConfig)}
    classifier = Classifier(job)  # a JobConfig is a ModelOptions
    assert classifier.options == job.model_options() and classifier.max_length == 64
    with pytest.raises(TypeError, match="not both"):
        Classifier(job, device="cpu")
