"""batchsent's ONNX graphs against the plain export they replaced, measured against torch float32 (issue 30 item 4).

For MiniLM (``../shared/models/minilm-sst2``, skipped when absent) and the DistilBERT shape, on the
built-in tuning sample: what ``--backend onnx`` runs (attention fused by ONNX Runtime's transformer
optimizer from an eager-attention export, float32 and per-channel int8: the tune's ``onnx float32`` and
``onnx int8``), and the plain SDPA export that format 2 ran, with per-tensor and per-channel int8.
Every variant scores the same rows through the same Classifier (tokenizing, batching and
post-processing are batchsent's), in 3 interleaved rounds; figures are the median rows/s and the ratio
to torch float32 in each round, and agreement is the share of labels equal to torch float32's.

  python benchmarks/onnx_variants.py [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
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
from batchsent.runtime import backends
from batchsent.runtime.backends import OnnxRunner
from batchsent.runtime.tune_sample import builtin_sample

ROUNDS = 3
REFERENCE = "torch float32"


def plain_graphs(exporter: Classifier, folder: Path) -> dict[str, Path]:
    """The plain (SDPA attention, unfused) export of format 2, with per-tensor and per-channel int8 of it."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    example, _ = exporter._sample_batches()
    plain = folder / "plain.onnx"
    backends._export(exporter.model, example, plain)
    found = {"plain export float32": plain}
    for per_channel in (False, True):
        target = folder / f"plain-int8-{'channel' if per_channel else 'tensor'}.onnx"
        quantize_dynamic(
            str(plain),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        found[f"plain export int8, per-{'channel' if per_channel else 'tensor'}"] = target
    return found


def operators(path: str) -> dict[str, int]:
    """How many of each fused operator a graph holds."""
    import onnx

    fused = {"Attention", "QAttention", "EmbedLayerNormalization", "QEmbedLayerNormalization", "SkipLayerNormalization"}
    counts = collections.Counter(node.op_type for node in onnx.load(path).graph.node)
    return {name: counts[name] for name in sorted(fused) if counts[name]}


def measure(model: str, threads: int, folder: Path) -> dict:
    texts = builtin_sample()
    folder.mkdir()
    scorers: dict[str, Classifier] = {
        REFERENCE: Classifier(model, device="cpu", threads=threads),
        "onnx float32 (--backend onnx)": Classifier(model, device="cpu", backend="onnx", threads=threads),
        "onnx int8 (--backend onnx --quantize int8)": Classifier(
            model, device="cpu", backend="onnx", quantize="int8", threads=threads
        ),
    }
    graphs = {name: scorer._runner.session._model_path for name, scorer in scorers.items() if name != REFERENCE}
    for name, path in plain_graphs(scorers["onnx float32 (--backend onnx)"], folder).items():
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
    fused = {name: operators(path) for name, path in graphs.items()}
    return {"rows": len(texts), "fused_operators": fused, "variants": figures}


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
            os.environ["BATCHSENT_ONNX_CACHE"] = str(scratch / f"onnx-{name}")
            result = measure(model, args.threads, scratch / f"variants-{name}")
            report["models"][name] = result
            print(f"== {name}, {result['rows']} rows, median of {ROUNDS} interleaved rounds [{where['cpu']}]")
            print(f"  fused operators: {result['fused_operators']}")
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
