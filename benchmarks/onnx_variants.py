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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, bench_models, torch_model
from e2e import machine

from batchsent.model.classifier import Classifier
from batchsent.runtime import backends
from batchsent.runtime.backends import OnnxRunner
from batchsent.runtime.tune_sample import builtin_sample

ROUNDS = 3
REFERENCE = "torch float32"


def plain_graphs(exporter: Classifier, folder: Path) -> dict[str, Path]:
    """The plain (SDPA attention, unfused) export of format 2, with per-tensor and per-channel int8 of it."""
    example, _ = exporter._sample_batches()
    plain = folder / "plain.onnx"
    backends._export(torch_model(exporter), example, plain)
    found = {"plain export float32": plain}
    for per_channel, label in ((False, "tensor"), (True, "channel")):
        found[f"plain export int8, per-{label}"] = folder / f"plain-int8-{label}.onnx"
        backends._quantize_int8(plain, found[f"plain export int8, per-{label}"], per_channel=per_channel)
    return found


def operators(path: str) -> dict[str, int]:
    """How many of each fused operator a graph holds."""
    import onnx

    fused = {"Attention", "QAttention", "EmbedLayerNormalization", "QEmbedLayerNormalization", "SkipLayerNormalization"}
    counts = collections.Counter(node.op_type for node in onnx.load(path).graph.node)
    return {name: counts[name] for name in sorted(fused) if counts[name]}


def interleaved(runs: dict[str, Callable[[int], tuple[int, np.ndarray]]]) -> dict[str, dict]:
    """Every entry of ``runs`` in ROUNDS interleaved rounds, the order turning by one each round (``runs[name](r)``
    scores round r's share: its row count and labels). Per entry: the median rows/s, the ratio to the first
    entry's in each round (a round a busy machine slowed, it slowed for all), the share of labels equal to the
    first entry's, and the seconds taken in all. Every entry first scores round 0's share untimed, as
    ``batchsent tune`` does (its first batches run slowly: ``runtime.tuning.WARMUP_ROUND``)."""
    names = list(runs)
    for name in names:
        runs[name](0)
    rates: dict[str, list[float]] = {name: [] for name in names}
    labels: dict[str, list[np.ndarray]] = {name: [] for name in names}
    seconds = dict.fromkeys(names, 0.0)
    for round_ in range(ROUNDS):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            started = time.perf_counter()
            rows, found = runs[name](round_)
            elapsed = time.perf_counter() - started
            rates[name].append(rows / elapsed)
            labels[name].append(found)
            seconds[name] += elapsed
    reference = names[0]
    expected = np.concatenate(labels[reference])
    return {
        name: {
            "rows_per_second": round(statistics.median(rates[name]), 1),
            "vs_float32_by_round": [round(ours / theirs, 2) for ours, theirs in zip(rates[name], rates[reference])],
            "agreement_pct": round(100 * float((np.concatenate(labels[name]) == expected).mean()), 2),
            "seconds": round(seconds[name], 3),
        }
        for name in names
    }


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

    def scored(name: str) -> Callable[[int], tuple[int, np.ndarray]]:
        def run(round_: int) -> tuple[int, np.ndarray]:
            rows = texts[round_::ROUNDS]
            return len(rows), scorers[name].predict(rows).probabilities.argmax(1)

        return run

    figures = interleaved({name: scored(name) for name in scorers})
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

    def one(name: str, model: str, scratch: Path) -> dict:
        result = measure(model, args.threads, scratch / f"variants-{name}")
        print(f"== {name}, {result['rows']} rows, median of {ROUNDS} interleaved rounds [{where['cpu']}]")
        print(f"  fused operators: {result['fused_operators']}")
        return result

    over_models(report, out, one)


def over_models(report: dict, out: Path, measure_one: Callable[[str, str, Path], dict]) -> None:
    """``measure_one(name, model, scratch)`` for each benchmark model, in a scratch state folder and ONNX cache,
    into ``report["models"]``; one line per variant printed, and the report written to ``out``."""
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        os.environ["BATCHSENT_STATE_DIR"] = str(scratch / "state")
        for name, model in bench_models(scratch).items():
            os.environ["BATCHSENT_ONNX_CACHE"] = str(scratch / f"onnx-{name}")
            result = report["models"][name] = measure_one(name, model, scratch)
            for variant, figure in result["variants"].items():
                peak = (
                    f"  {figure['gflops']:6.1f} GFLOP/s ({figure['share_of_gemm_peak']})" if "gflops" in figure else ""
                )
                print(
                    f"  {variant:52s} {figure['rows_per_second']:7.1f} rows/s  vs float32 by round "
                    f"{figure['vs_float32_by_round']}  agree {figure['agreement_pct']:6.2f}%{peak}",
                    flush=True,
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
