"""``batchsent tune`` as a benchmark: every variant this machine runs, on MiniLM and the DistilBERT shape.

Each model is tuned afresh (a temporary state folder, so nothing stored is reused or
replaced) on the built-in sample, and the table is printed and written with the CPU it
came from. Agreement on the random DistilBERT-shaped model says little (few near-ties);
MiniLM's (../shared/models/minilm-sst2, skipped when absent) is a real sentiment model's.

  python benchmarks/tune.py [--threads 2] [--time-cap 600]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, distilbert_shaped
from corpus import FIXTURE_MODEL

from batchsent.model.classifier import Classifier
from batchsent.runtime.cpu import this_cpu
from batchsent.runtime.tune_sample import builtin_sample
from batchsent.runtime.tuning import BUILTIN_SAMPLE, run_tuning
from batchsent.settings.options import ModelOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-cap", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "tune.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {"cpu": this_cpu().describe(), "torch": torch.__version__, "threads": args.threads, "models": []}
    print(f"CPU: {report['cpu']}; torch {torch.__version__}; {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["BATCHSENT_STATE_DIR"] = str(Path(scratch) / "state")
        os.environ["BATCHSENT_ONNX_CACHE"] = str(Path(scratch) / "onnx")
        models = {"distilbert": str(distilbert_shaped(Path(scratch) / "distilbert"))}
        if FIXTURE_MODEL.is_dir():
            models["minilm"] = str(FIXTURE_MODEL)
        for name, directory in models.items():
            options = ModelOptions(model=directory, device="cpu", threads=args.threads)
            tuning = run_tuning(options, builtin_sample(), BUILTIN_SAMPLE, args.time_cap, Classifier)
            print(f"\n== {name}: --precision fast runs {tuning.chosen.variant} [CPU: {report['cpu']}]")
            print("\n".join(tuning.table()), flush=True)
            report["models"].append(
                {
                    "model": name,
                    "chosen": tuning.chosen.variant,
                    "measurements": [asdict(m) for m in tuning.measurements],
                }
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out} (CPU: {report['cpu']})")


if __name__ == "__main__":
    main()
