"""The anchor: CTranslate2's float32 and int8 encoders against batchsent's variants, model time only.

Every runner gets the same length-sorted, right-padded batches that batchsent's Classifier
plans (review mix), so only the model differs; tokenization and post-processing are left
out. CTranslate2 converts the encoder (BertModel / DistilBertModel); the classification
head (BERT: pooler then classifier; DistilBERT: pre-classifier, ReLU, classifier) is applied
to its output in numpy, as the head costs nothing beside the encoder.

Label agreement with batchsent's float32 is measured on the built-in tuning sample (520
reviews) and, for MiniLM, on 1,000 SST-2 phrases. batchsent's ``fast`` is what this
machine's tuning chose for the model (``batchsent tune``, run here if nothing is stored).

  pip install 'batchsent[ctranslate2]'   # optional: never a runtime dependency
  python benchmarks/ctranslate2_anchor.py [--rows 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, distilbert_shaped
from corpus import FIXTURE_MODEL, review_mix, sst2_labelled

from batchsent.model.classifier import Classifier
from batchsent.runtime.cpu import this_cpu
from batchsent.runtime.tune_sample import builtin_sample


def planned_batches(classifier: Classifier, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """batchsent's own batches for ``texts``: sorted by length, right-padded, as the job runs them."""
    chunk = classifier.encode(texts)
    return [classifier._batch_inputs(chunk, batch) for batch in chunk.batches]


class Ct2Classifier:
    """A CTranslate2 encoder with the transformers model's classification head applied in numpy."""

    def __init__(self, model_dir: str, converted: Path, compute_type: str, threads: int) -> None:
        import ctranslate2
        from transformers import AutoModelForSequenceClassification

        if not (converted / "model.bin").is_file():
            ctranslate2.converters.TransformersConverter(model_dir).convert(str(converted), force=True)
        self.encoder = ctranslate2.Encoder(
            str(converted), device="cpu", compute_type=compute_type, intra_threads=threads
        )
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        self.kind = model.config.model_type
        head = {
            name: value.detach().numpy()
            for name, value in model.named_parameters()
            if name.startswith(("classifier.", "pre_classifier."))
        }
        self.head = head

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        lengths = inputs["attention_mask"].sum(axis=1)
        ids = [row[:length].tolist() for row, length in zip(inputs["input_ids"], lengths)]
        types = None
        if "token_type_ids" in inputs:
            types = [row[:length].tolist() for row, length in zip(inputs["token_type_ids"], lengths)]
        output = self.encoder.forward_batch(ids, token_type_ids=types)
        h = self.head
        if self.kind == "distilbert":
            first = np.asarray(output.last_hidden_state)[:, 0]
            hidden = np.maximum(first @ h["pre_classifier.weight"].T + h["pre_classifier.bias"], 0)
        else:
            hidden = np.asarray(output.pooler_output)
        return hidden @ h["classifier.weight"].T + h["classifier.bias"]


def timed(runner, batches: list[dict[str, np.ndarray]]) -> tuple[float, np.ndarray]:
    runner(batches[0])  # warm-up: one-time kernel set-up
    started = time.perf_counter()
    logits = [runner(batch) for batch in batches]
    return time.perf_counter() - started, np.concatenate(logits)


def labels_of(runner, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([np.asarray(runner(batch)).argmax(1) for batch in batches])


def compare(name: str, model_dir: str, rows: int, threads: int, scratch: Path) -> dict:
    exact = Classifier(model_dir, device="cpu", threads=threads)
    fast = Classifier(model_dir, device="cpu", threads=threads, precision="fast", notes=print)
    fbgemm = None
    if this_cpu().int8_kernel is not None:
        fbgemm = Classifier(model_dir, device="cpu", threads=threads, quantize="int8")
    runners = {"batchsent float32": exact._runner, f"batchsent fast ({fast.variant.split(',')[0]})": fast._runner}
    if fbgemm is not None:
        runners[f"batchsent {fbgemm.variant}"] = fbgemm._runner
    for compute in ("float32", "int8"):
        runners[f"CTranslate2 {compute}"] = Ct2Classifier(model_dir, scratch / f"{name}-ct2", compute, threads)
    speed_batches = planned_batches(exact, review_mix(rows, seed=0))
    agreement_sets = {"tuning sample": planned_batches(exact, builtin_sample())}
    gold = sst2_labelled()[-1000:]
    if name == "minilm" and gold:
        agreement_sets["SST-2 phrases"] = planned_batches(exact, [text for text, _ in gold])
    references = {key: labels_of(exact._runner, batches) for key, batches in agreement_sets.items()}
    results = []
    reference_seconds = None
    for runner_name, runner in runners.items():
        seconds, _ = timed(runner, speed_batches)
        reference_seconds = reference_seconds or seconds
        agreement = {
            key: round(100 * float(np.mean(labels_of(runner, batches) == references[key])), 2)
            for key, batches in agreement_sets.items()
        }
        results.append(
            {
                "runner": runner_name,
                "rows_per_s": round(rows / seconds, 2),
                "vs_batchsent_float32": round(reference_seconds / seconds, 2),
                "agreement_pct": agreement,
            }
        )
        print(
            f"  {runner_name:34} {rows / seconds:8.2f} rows/s  x{reference_seconds / seconds:.2f}  "
            f"agreement {agreement}",
            flush=True,
        )
    return {"model": name, "rows": rows, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200, help="review-mix rows timed per runner")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "ctranslate2.json")
    args = parser.parse_args()
    try:
        import ctranslate2
    except ImportError:
        print("CTranslate2 anchor skipped: pip install 'batchsent[ctranslate2]'")
        return
    torch.set_num_threads(args.threads)
    print(
        f"CPU: {this_cpu().describe()}; torch {torch.__version__}, CTranslate2 {ctranslate2.__version__}, "
        f"{args.threads} threads; model time only, the same sorted batches",
        flush=True,
    )
    report = {
        "cpu": this_cpu().describe(),
        "torch": torch.__version__,
        "ctranslate2": ctranslate2.__version__,
        "threads": args.threads,
        "models": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["BATCHSENT_STATE_DIR"] = str(Path(scratch) / "state")  # a fresh tuning, the user's left alone
        os.environ["BATCHSENT_ONNX_CACHE"] = str(Path(scratch) / "onnx")
        models = {"distilbert": str(distilbert_shaped(Path(scratch) / "distilbert"))}
        if FIXTURE_MODEL.is_dir():
            models["minilm"] = str(FIXTURE_MODEL)
        for name, directory in models.items():
            print(f"\n== {name}: {args.rows} review-mix rows", flush=True)
            report["models"].append(compare(name, directory, args.rows, args.threads, Path(scratch)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out} (CPU: {report['cpu']})")


if __name__ == "__main__":
    main()
