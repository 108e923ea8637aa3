"""batchsent on a CUDA GPU against the transformers pipeline on the same GPU, model and texts.

The pipeline runs in a process of its own (``--pipeline-only``), so its process-wide
settings (TOKENIZERS_PARALLELISM=false) never reach batchsent's measurements; end-to-end
figures with whole processes come from ``benchmarks/e2e.py --device cuda`` (make bench-gpu
runs both).

For each model (the SST-2 fixture when present or given with --model, and a seeded
DistilBERT-shaped classifier) it reports, on the review mix:
  - the pipeline on the GPU at float32, float16 and bfloat16, each at its default batch size (1),
    at batch_size=32 in text order and at 32 over length-sorted texts (truncation=True);
  - batchsent's Classifier at float32, float16 (the CUDA default) and bfloat16: rows/s, ratio to
    the fastest pipeline setting at the same dtype (named in the result), and agreement with the
    float32 pipeline (labels %, max |delta prob|);
  - batchsent's job end to end (CSV in, Parquet out, model loaded) at the default dtype;
  - rows/s per token budget at float16, to check the CUDA default.

  python benchmarks/gpu.py [--rows N] [--model DIR] [--budgets 8192,...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import distilbert_shaped
from corpus import FIXTURE_MODEL, review_mix

from batchsent import JobConfig, run
from batchsent.model.classifier import Classifier
from batchsent.runtime.device import CUDA_LIMITS

RESULTS = Path(__file__).resolve().parent / "results"
PIPELINE_SETTINGS = ((1, False), (32, False), (32, True))  # (batch_size, length-sorted): default, batched, careful


def timed(function, *args, **kwargs):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def warm_up_sample(texts: list[str]) -> list[str]:
    """Every fourth text: the first calls at each new shape (kernel loading, allocator growth) stay out of the timings."""
    return texts[::4]


def pipeline_probabilities(
    model_dir: str, texts: list[str], labels: list[str], dtype: torch.dtype, batch_size: int, length_sorted: bool
):
    """Seconds and probabilities (in text order) of the pipeline on ``texts``, measured in a separate process."""
    with tempfile.TemporaryDirectory() as scratch:
        request = Path(scratch) / "request.json"
        request.write_text(
            json.dumps(
                {
                    "model": model_dir,
                    "texts": texts,
                    "labels": labels,
                    "dtype": str(dtype),
                    "batch_size": batch_size,
                    "sorted": length_sorted,
                }
            )
        )
        done = subprocess.run(
            [sys.executable, __file__, "--pipeline-only", str(request)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"the pipeline process failed:\n{done.stderr[-2000:]}")
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    return answer["seconds"], np.array(answer["probabilities"])


def pipeline_only(request_path: Path) -> None:
    """Child process: time the pipeline on the request's texts and print seconds and probabilities as JSON."""
    from transformers import pipeline

    request = json.loads(request_path.read_text())
    texts, labels = request["texts"], request["labels"]
    dtype = getattr(torch, request["dtype"].removeprefix("torch."))
    classify = pipeline("text-classification", model=request["model"], device=0, dtype=dtype)
    batch_size = request["batch_size"]
    order = sorted(range(len(texts)), key=lambda row: len(texts[row])) if request["sorted"] else range(len(texts))
    ordered = [texts[row] for row in order]
    classify(warm_up_sample(ordered), batch_size=batch_size, truncation=True, top_k=None)
    seconds, results = timed(classify, ordered, batch_size=batch_size, truncation=True, top_k=None)
    by_row = dict(zip(order, results))
    probabilities = [
        [{r["label"]: r["score"] for r in by_row[row]}[label] for label in labels] for row in range(len(texts))
    ]
    print(json.dumps({"seconds": seconds, "probabilities": probabilities}))


def measure(name: str, model_dir: str, texts: list[str], budgets: list[int]) -> dict:
    rows = len(texts)
    reference = Classifier(model_dir, device="cuda", dtype="float32")
    labels = reference.labels
    result: dict = {"model": name, "rows": rows, "default_token_budget": CUDA_LIMITS.tokens, "pipeline": {}}
    for dtype_name in ("float32", "float16", "bfloat16"):
        for batch_size, length_sorted in PIPELINE_SETTINGS:
            setting = f"{dtype_name} bs={batch_size}{' sorted' if length_sorted else ''}"
            seconds, probabilities = pipeline_probabilities(
                model_dir, texts, labels, getattr(torch, dtype_name), batch_size, length_sorted
            )
            result["pipeline"][setting] = {
                "dtype": dtype_name,
                "rows_per_s": round(rows / seconds, 1),
                "probabilities": probabilities,
            }
            print(f"  pipeline {setting:22} {rows / seconds:9.1f} rows/s", flush=True)
    exact = result["pipeline"]["float32 bs=1"]["probabilities"]
    result["classifier"] = []
    for dtype_name in ("float32", "float16", "bfloat16"):
        classifier = Classifier(model_dir, device="cuda", dtype=dtype_name)
        classifier.predict(warm_up_sample(texts))
        seconds, scores = timed(classifier.predict, texts)
        delta = np.abs(scores.probabilities - exact)
        same_dtype = {name: entry for name, entry in result["pipeline"].items() if entry["dtype"] == dtype_name}
        fastest = max(same_dtype, key=lambda name: same_dtype[name]["rows_per_s"])
        row = {
            "dtype": dtype_name,
            "rows_per_s": round(rows / seconds, 1),
            "fastest_pipeline_same_dtype": fastest,
            "ratio_vs_fastest_pipeline_same_dtype": round(rows / seconds / same_dtype[fastest]["rows_per_s"], 2),
            "label_agreement_vs_fp32_pipeline_pct": round(
                100 * float(np.mean(scores.probabilities.argmax(1) == exact.argmax(1))), 2
            ),
            "max_abs_delta_prob": float(delta.max()),
        }
        result["classifier"].append(row)
        print(
            f"  batchsent {dtype_name:9} {row['rows_per_s']:8.1f} rows/s  x{row['ratio_vs_fastest_pipeline_same_dtype']} "
            f"the fastest pipeline at {dtype_name} ({fastest}); labels agree {row['label_agreement_vs_fp32_pipeline_pct']}%, max |dprob| {delta.max():.2e}",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch) / "texts.csv", Path(scratch) / "scored.parquet"
        pacsv.write_csv(pa.table({"id": [str(i) for i in range(rows)], "text": texts}), source)
        classifier = Classifier(model_dir, device="cuda")
        classifier.predict(warm_up_sample(texts))
        seconds, _ = timed(
            lambda: run(JobConfig(input=source, output=target, model=model_dir, device="cuda"), classifier=classifier)
        )
        labels_out = pq.read_table(target).column("sentiment_label").to_pylist()
    agreement = 100 * float(np.mean([label == labels[i] for label, i in zip(labels_out, exact.argmax(1))]))
    result["end_to_end"] = {
        "dtype": classifier.dtype,
        "rows_per_s": round(rows / seconds, 1),
        "label_agreement_pct": round(agreement, 2),
    }
    print(f"  end to end ({classifier.dtype}) {rows / seconds:8.1f} rows/s; labels agree {agreement:.2f}%", flush=True)
    result["sweep"] = []
    for budget in budgets:
        classifier = Classifier(model_dir, device="cuda", token_budget=budget, batch_size=budget)
        classifier.predict(warm_up_sample(texts))
        seconds, _ = timed(classifier.predict, texts)
        result["sweep"].append({"token_budget": budget, "rows_per_s": round(rows / seconds, 1)})
        print(f"  sweep float16 budget {budget:>7}: {rows / seconds:9.1f} rows/s", flush=True)
    for entry in result["pipeline"].values():
        entry.pop("probabilities")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument(
        "--model", default=str(FIXTURE_MODEL), help="a real classifier directory (default: the fixture)"
    )
    parser.add_argument("--budgets", default="8192,16384,32768,65536,131072")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    parser.add_argument("--pipeline-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline_only:
        pipeline_only(args.pipeline_only)
        return
    if not torch.cuda.is_available():
        sys.exit("bench-gpu: no CUDA device here")
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "results": []}
    print(f"{report['gpu']}, torch {torch.__version__}", flush=True)
    texts = review_mix(args.rows, seed=0)
    budgets = [int(b) for b in args.budgets.split(",") if b]
    with tempfile.TemporaryDirectory() as scratch:
        models = {"distilbert": str(distilbert_shaped(Path(scratch) / "distilbert"))}
        if Path(args.model).is_dir():
            models = {"fixture": args.model, **models}
        for name, directory in models.items():
            print(f"\n== {name}: {len(texts)} rows", flush=True)
            report["results"].append(measure(name, directory, texts, budgets))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
