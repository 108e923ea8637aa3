"""Zero-shot labels: batchsent's Classifier against pipeline("zero-shot-classification"), 5 labels, review mix.

The NLI model here is the MiniLM-SST-2 fixture (../shared/models/minilm-sst2) with its
two classes renamed contradiction/entailment in a copy of its config: the same network
and cost as a MiniLM NLI cross-encoder, so the timing is representative; the labels it
picks mean nothing. Both sides run in this process with the same threads, on the same
texts; the table reports rows (texts) per second and how often the top labels agree.

  python benchmarks/zero_shot.py [--rows 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache import cpu_model
from corpus import FIXTURE_MODEL, review_mix

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = ["acting", "plot", "music", "price", "length"]
TEMPLATE = "This review is about {}."


def nli_copy(source: Path, target: Path) -> Path:
    """The model with its classes renamed contradiction (0) and entailment (1)."""
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["id2label"] = {"0": "contradiction", "1": "entailment"}
    config["label2id"] = {"contradiction": 0, "entailment": 1}
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "zero-shot.json")
    args = parser.parse_args()
    if not FIXTURE_MODEL.is_dir():
        raise SystemExit(f"needs the MiniLM fixture at {FIXTURE_MODEL}")
    import torch
    from transformers import pipeline

    from batchsent import Classifier

    torch.set_num_threads(args.threads)
    texts = review_mix(args.rows, seed=7)
    print(f"CPU: {cpu_model()}, {args.threads} threads; {args.rows} review-mix rows x {len(LABELS)} labels", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        model = str(nli_copy(FIXTURE_MODEL, Path(scratch) / "nli"))
        pipe = pipeline("zero-shot-classification", model=model, tokenizer=model, device="cpu")
        pipe(texts[:2], candidate_labels=LABELS, hypothesis_template=TEMPLATE)  # warm-up
        started = time.perf_counter()
        theirs = pipe(texts, candidate_labels=LABELS, hypothesis_template=TEMPLATE)
        pipeline_seconds = time.perf_counter() - started
        started = time.perf_counter()  # batched as a user would try: pairs padded to the longest of 32, file order
        pipe(texts, candidate_labels=LABELS, hypothesis_template=TEMPLATE, batch_size=32)
        batched_seconds = time.perf_counter() - started
        classifier = Classifier(
            model, device="cpu", labels=",".join(LABELS), hypothesis_template=TEMPLATE, threads=args.threads
        )
        classifier.predict(texts[:2])
        started = time.perf_counter()
        ours = classifier.predict(texts).probabilities
        ours_seconds = time.perf_counter() - started
    expected = np.array([[dict(zip(r["labels"], r["scores"], strict=True))[label] for label in LABELS] for r in theirs])
    agree = float(np.mean(expected.argmax(axis=1) == ours.argmax(axis=1)))
    worst = float(np.abs(expected - ours).max())
    report = {
        "cpu": cpu_model(),
        "threads": args.threads,
        "rows": args.rows,
        "labels": LABELS,
        "pipeline_rows_per_second": round(args.rows / pipeline_seconds, 2),
        "pipeline_batch_32_rows_per_second": round(args.rows / batched_seconds, 2),
        "speedup_vs_batch_32": round(batched_seconds / ours_seconds, 2),
        "batchsent_rows_per_second": round(args.rows / ours_seconds, 2),
        "speedup": round(pipeline_seconds / ours_seconds, 2),
        "top_label_agreement": agree,
        "max_abs_difference": worst,
    }
    print(
        f"  pipeline: {report['pipeline_rows_per_second']} rows/s (batch_size=32: "
        f"{report['pipeline_batch_32_rows_per_second']}); batchsent Classifier: "
        f"{report['batchsent_rows_per_second']} rows/s ({report['speedup']}x, {report['speedup_vs_batch_32']}x the "
        f"batched pipeline); top labels agree {agree:.1%}, "
        f"largest probability difference {worst:.1e}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
