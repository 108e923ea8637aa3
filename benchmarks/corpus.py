"""Benchmark corpora built from real SST-2 phrases (../shared/data), or synthetic text.

"Review mix": each row joins k phrases, k log-uniform in [1, 64] (seeded), which gives
about 180 tokens a row on average with some rows past 512 tokens, like product reviews.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

SHARED = Path(os.environ.get("BATCHSENT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SST2 = SHARED / "data" / "sst2-train.tsv"
FIXTURE_MODEL = SHARED / "models" / "minilm-sst2"

_SYNTHETIC_WORDS = [
    "the",
    "a",
    "film",
    "movie",
    "story",
    "plot",
    "acting",
    "cast",
    "director",
    "scene",
    "ending",
    "music",
    "script",
    "great",
    "good",
    "fine",
    "bad",
    "terrible",
    "boring",
    "wonderful",
    "moving",
    "funny",
    "dull",
    "slow",
    "fast",
    "long",
    "short",
    "never",
    "always",
    "really",
    "quite",
    "not",
    "but",
    "and",
    "it",
    "is",
    "was",
    "this",
    "that",
    "with",
    "for",
    "of",
    "in",
    "on",
    "at",
    "by",
    "as",
    "an",
    "too",
    "very",
    "so",
    "more",
    "most",
    "less",
]


def sst2_phrases() -> list[str]:
    """The SST-2 training phrases, or a seeded synthetic stand-in when ../shared is absent."""
    if SST2.is_file():
        lines = SST2.read_text(encoding="utf-8").splitlines()[1:]
        return [line.split("\t")[0].strip() for line in lines if line.strip()]
    rng = random.Random(1234)
    return [" ".join(rng.choice(_SYNTHETIC_WORDS) for _ in range(rng.randint(2, 25))) for _ in range(20_000)]


def sst2_labelled() -> list[tuple[str, int]]:
    """(phrase, gold label) pairs; empty when ../shared is absent."""
    if not SST2.is_file():
        return []
    pairs = []
    for line in SST2.read_text(encoding="utf-8").splitlines()[1:]:
        text, _, label = line.rpartition("\t")
        if text.strip():
            pairs.append((text.strip(), int(label)))
    return pairs


def review_mix(rows: int, seed: int = 0, phrases: list[str] | None = None) -> list[str]:
    """``rows`` texts, each joining k phrases with k log-uniform in [1, 64]."""
    phrases = phrases or sst2_phrases()
    rng = random.Random(seed)
    texts = []
    for _ in range(rows):
        k = int(math.exp(rng.uniform(0, math.log(65))))
        texts.append(" ".join(rng.choice(phrases) for _ in range(max(1, min(k, 64)))))
    return texts


def short_texts(rows: int, seed: int = 0) -> list[str]:
    """``rows`` single phrases (short texts, for the memory benchmark)."""
    phrases = sst2_phrases()
    rng = random.Random(seed)
    return [rng.choice(phrases) for _ in range(rows)]
