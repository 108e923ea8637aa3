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


def variants_of(export: Path, folder: Path) -> tuple[dict[str, Path], dict[str, int]]:
    """The export, its optimized form, and per-tensor and per-channel int8 of each (made once, in ``folder``);
    and the count of each operator the optimizer fused."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = folder / "optimized.onnx"
    optimizer = optimize_model(str(export), model_type="bert", num_heads=0, hidden_size=0)
    optimizer.save_model_to_file(str(optimized))
    fused = {name: count for name, count in optimizer.get_fused_operator_statistics().items() if count}
    found = {"onnx float32": export, "onnx float32, optimized": optimized}
    for source, name in ((export, "onnx int8"), (optimized, "onnx int8, optimized")):
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
    return found, fused


def measure(model: str, threads: int, folder: Path) -> dict:
    texts = builtin_sample()
    reference = Classifier(model, device="cpu", threads=threads)
    exporter = Classifier(model, device="cpu", backend="onnx", threads=threads)
    (export,) = Path(os.environ["BATCHSENT_ONNX_CACHE"]).glob(f"*{os.sep}model.onnx")
    folder.mkdir()
    scorers: dict[str, Classifier] = {REFERENCE: reference}
    variants, fused = variants_of(export, folder)
    for name, path in variants.items():
        scorer = Classifier(model, device="cpu", backend="onnx", threads=threads)
        scorer._runner = OnnxRunner(path, scorer.device, threads)  # the same Classifier around another graph
        scorers[name] = scorer
    del exporter
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
                    f"  {variant:36s} {figure['rows_per_second']:7.1f} rows/s  vs float32 by round "
                    f"{figure['vs_float32_by_round']}  agree {figure['agreement_pct']:.2f}%",
                    flush=True,
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
