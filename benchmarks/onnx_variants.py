"""ONNX Runtime variants that ``batchsent tune`` does not time, measured against torch float32 (issue 30 item 4).

For MiniLM (``../shared/models/minilm-sst2``, skipped when absent) and the DistilBERT shape, on the
built-in tuning sample: batchsent's ONNX export as it is (``onnx float32``; ``onnx int8``, one scale
per weight tensor, the tune variant), the same export with per-channel int8 weights, and each of those
after ONNX Runtime's transformer optimizer (fused attention, layer norm and GELU). Every variant scores
the same rows through the same Classifier (tokenizing, batching and post-processing are batchsent's),
in 3 interleaved rounds; figures are the median rows/s and the ratio to torch float32 in each round,
and agreement is the share of labels equal to torch float32's. A variant would be worth adding to the
tune only where it beats float32 by the tune's margin at 99.5% agreement.

  python benchmarks/onnx_variants.py [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, distilbert_shaped
from corpus import FIXTURE_MODEL
from e2e import machine

from batchsent.model.classifier import Classifier
from batchsent.runtime.backends import OnnxRunner
from batchsent.runtime.tune_sample import builtin_sample

ROUNDS = 3
REFERENCE = "torch float32"


def quantized(source: Path, folder: Path, name: str) -> dict[str, Path]:
    """Per-tensor and per-channel dynamic int8 of ``source``, named after ``name``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    found = {}
    for per_channel in (False, True):
        label = f"{name}{', per-channel' if per_channel else ''}"
        target = folder / (label.replace(", ", "-").replace(" ", "_") + ".onnx")
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # the optimizer's fused ops carry no types
        )
        found[label] = target
    return found


def optimized(source: Path, target: Path, config) -> dict[str, int]:
    """``source`` through ONNX Runtime's transformer optimizer into ``target``; the count of each op it fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimizer = optimize_model(
        str(source), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    )
    optimizer.save_model_to_file(str(target))
    return {name: count for name, count in optimizer.get_fused_operator_statistics().items() if count}


def eager_attention_export(model: str, export: Path, tokenizer, target: Path) -> None:
    """The model exported as batchsent exports it (``backends._export``), but with transformers' eager attention
    instead of SDPA: the pattern the optimizer's attention fusion matches."""
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification

    from batchsent.runtime.backends import _export

    names = [i.name for i in ort.InferenceSession(str(export), providers=["CPUExecutionProvider"]).get_inputs()]
    loaded = AutoModelForSequenceClassification.from_pretrained(model, attn_implementation="eager").eval()
    sample = tokenizer(
        ["a short sample", "a somewhat longer sample text for the export"], padding=True, return_tensors="np"
    )
    _export(loaded, {name: sample[name].astype(np.int64) for name in names}, target)


def variants_of(model: str, export: Path, exporter: Classifier, folder: Path) -> tuple[dict[str, Path], dict]:
    """batchsent's export, its optimized form, the eager-attention export optimized, and per-tensor and
    per-channel int8 of each (made in ``folder``); and the count of each operator the optimizer fused."""
    found: dict[str, Path] = {"onnx float32": export}
    found |= quantized(export, folder, "onnx int8")
    fused = {"sdpa export": optimized(export, folder / "optimized.onnx", exporter.config)}
    found["onnx float32, optimized"] = folder / "optimized.onnx"
    found |= quantized(folder / "optimized.onnx", folder, "onnx int8, optimized")
    eager = folder / "eager-attention.onnx"
    eager_attention_export(model, export, exporter.tokenizer, eager)
    fused["eager-attention export"] = optimized(eager, folder / "eager-optimized.onnx", exporter.config)
    found["onnx float32, eager attention, optimized"] = folder / "eager-optimized.onnx"
    found |= quantized(folder / "eager-optimized.onnx", folder, "onnx int8, eager attention, optimized")
    return found, fused


def measure(model: str, threads: int, folder: Path) -> dict:
    texts = builtin_sample()
    reference = Classifier(model, device="cpu", threads=threads)
    exporter = Classifier(model, device="cpu", backend="onnx", threads=threads)
    (export,) = Path(os.environ["BATCHSENT_ONNX_CACHE"]).glob(f"*{os.sep}model.onnx")
    folder.mkdir()
    scorers: dict[str, Classifier] = {REFERENCE: reference}
    variants, fused = variants_of(model, export, exporter, folder)
    for name, path in variants.items():
        scorer = Classifier(model, device="cpu", backend="onnx", threads=threads)
        scorer._runner = OnnxRunner(path, scorer.device, threads)  # the same Classifier around another graph
        scorers[name] = scorer
    names = list(scorers)
    rates: dict[str, list[float]] = {name: [] for name in names}
    labels: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for round_ in range(ROUNDS):
        rows = texts[round_::ROUNDS]
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            started = time.perf_counter()
            probabilities = scorers[name].predict(rows).probabilities
            rates[name].append(len(rows) / (time.perf_counter() - started))
            labels[name].append(probabilities.argmax(1))
    expected = np.concatenate(labels[REFERENCE])
    figures = {}
    for name in names:
        ratios = [ours / theirs for ours, theirs in zip(rates[name], rates[REFERENCE], strict=True)]
        figures[name] = {
            "rows_per_second": round(statistics.median(rates[name]), 1),
            "vs_float32_by_round": [round(r, 2) for r in ratios],
            "agreement_pct": round(100 * float((np.concatenate(labels[name]) == expected).mean()), 2),
        }
    return {"rows": len(texts), "fused_by_the_optimizer": fused, "variants": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/onnx-variants-<cpu class>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing hint, once per variant
    where = machine("cpu")
    out = args.out or RESULTS / f"onnx-variants-{where['cpu_class']}.json"
    report = {
        "benchmark": "onnx-variants",
        "command": " ".join(["python", "benchmarks/onnx_variants.py", *sys.argv[1:]]),
        "threads": args.threads,
        "rounds": ROUNDS,
        "machine": where,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        os.environ["BATCHSENT_STATE_DIR"] = str(scratch / "state")
        models = {"distilbert": str(distilbert_shaped(scratch / "distilbert-model"))}
        if FIXTURE_MODEL.is_dir():
            models = {"minilm": str(FIXTURE_MODEL), **models}
        for name, model in models.items():
            os.environ["BATCHSENT_ONNX_CACHE"] = str(scratch / f"onnx-{name}")  # one export per cache: found by glob
            result = measure(model, args.threads, scratch / f"variants-{name}")
            report["models"][name] = result
            print(f"== {name}, {result['rows']} rows, median of {ROUNDS} interleaved rounds [{where['cpu']}]")
            print(f"  fused by the optimizer: {result['fused_by_the_optimizer']}")
            for variant, figure in result["variants"].items():
                print(
                    f"  {variant:52s} {figure['rows_per_second']:7.1f} rows/s  vs float32 by round "
                    f"{figure['vs_float32_by_round']}  agree {figure['agreement_pct']:.2f}%",
                    flush=True,
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
