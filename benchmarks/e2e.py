"""End to end, whole processes: `batchsent score` against a transformers-pipeline script, CSV in and out.

Each measurement is its own process, timed from start to exit (imports, model load, read,
score, write), so no setting of one (the pipeline turns TOKENIZERS_PARALLELISM off for its
whole process) reaches the other. A third process times the Classifier alone on the
loaded model, to show how much of its rate the job keeps. On CUDA, GPU utilisation is
sampled with nvidia-smi while batchsent runs.

  python benchmarks/e2e.py [--rows 400] [--models minilm,distilbert] [--device cpu|cuda]
                           [--dtype float32|float16] [--extra "--precision fast"]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import FIXTURE_MODEL, review_mix  # noqa: E402

RESULTS = HERE / "results"
PIPELINE_BATCH = 32

PIPELINE_JOB = """
import sys, pyarrow as pa, pyarrow.csv as pacsv, torch
from transformers import pipeline
source, target, model, device, dtype = sys.argv[1:6]
table = pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(column_types={"id": pa.string(), "text": pa.string()}))
classify = pipeline("text-classification", model=model, device=device, dtype=getattr(torch, dtype))
results = classify(table.column("text").to_pylist(), batch_size=%d, truncation=True)
table = table.append_column("label", pa.array([r["label"] for r in results]))
table = table.append_column("score", pa.array([r["score"] for r in results], pa.float32()))
pacsv.write_csv(table, target)
""" % PIPELINE_BATCH

CLASSIFIER_ONLY = """
import sys, time, pyarrow.csv as pacsv, torch
from batchsent.model import Classifier
source, model, device, dtype = sys.argv[1:5]
texts = pacsv.read_csv(source).column("text").to_pylist()
classifier = Classifier(model, device=device, dtype=dtype)
classifier.predict(texts[::4])  # warm-up: kernels and allocator at every shape class
sync = torch.cuda.synchronize if classifier.device.type == "cuda" else (lambda: None)
sync(); start = time.perf_counter(); classifier.predict(texts); sync()
print(len(texts) / (time.perf_counter() - start))
"""


def timed_process(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(command)}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def gpu_sampler() -> subprocess.Popen | None:
    if shutil.which("nvidia-smi") is None:
        return None
    return subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip


def mean_utilisation(sampler: subprocess.Popen | None) -> float | None:
    if sampler is None:
        return None
    sampler.terminate()
    values = [float(v) for v in sampler.communicate()[0].split() if v.replace(".", "", 1).isdigit()]
    return round(sum(values) / len(values), 1) if values else None


def labels_of(path: Path, column: str) -> list[str | None]:
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    return table.column(column).to_pylist()


def measure(name: str, model: str, rows: int, args: argparse.Namespace, scratch: Path) -> dict:
    source = scratch / f"{name}.csv"
    texts = review_mix(rows, seed=0)
    pacsv.write_csv(pa.table({"id": [str(i) for i in range(rows)], "text": texts}), source)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    python = sys.executable
    pipeline_out, ours_out = scratch / f"{name}.pipeline.csv", scratch / f"{name}.batchsent.csv"
    pipeline_seconds, _ = timed_process(
        [python, "-c", PIPELINE_JOB, str(source), str(pipeline_out), model, args.device, args.dtype], env
    )
    command = [python, "-m", "batchsent", "score", str(source), "-o", str(ours_out), "--model", model, "--device",
               args.device, "--threads", str(args.threads), "-q", "--overwrite", *shlex.split(args.extra)]  # fmt: skip
    if "--precision" not in args.extra:
        command += ["--dtype", args.dtype]
    sampler = gpu_sampler() if args.device.startswith("cuda") else None
    ours_seconds, _ = timed_process(command, env)
    utilisation = mean_utilisation(sampler)
    _, rate = timed_process([python, "-c", CLASSIFIER_ONLY, str(source), model, args.device, args.dtype], env)
    theirs, ours = labels_of(pipeline_out, "label"), labels_of(ours_out, "sentiment_label")
    agreement = 100 * sum(a == b for a, b in zip(theirs, ours)) / rows
    result = {
        "model": name, "rows": rows, "device": args.device, "dtype": args.dtype, "extra": args.extra,
        "pipeline_rows_per_s": round(rows / pipeline_seconds, 2), "batchsent_rows_per_s": round(rows / ours_seconds, 2),
        "ratio_vs_pipeline": round(pipeline_seconds / ours_seconds, 2),
        "classifier_only_rows_per_s": round(float(rate), 2),
        "share_of_classifier_rate_pct": round(100 * rows / ours_seconds / float(rate), 1),
        "label_agreement_pct": round(agreement, 2), "gpu_utilisation_pct": utilisation,
    }  # fmt: skip
    print(f"  {name}: pipeline {result['pipeline_rows_per_s']} rows/s, batchsent {result['batchsent_rows_per_s']} "
          f"rows/s (x{result['ratio_vs_pipeline']}, whole processes); Classifier alone {result['classifier_only_rows_per_s']} "
          f"rows/s ({result['share_of_classifier_rate_pct']}% kept end to end); labels agree {agreement:.2f}%"
          + (f"; GPU busy {utilisation}%" if utilisation is not None else ""), flush=True)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--models", default="minilm,distilbert")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra", default="", help="more batchsent flags, e.g. '--precision fast'")
    parser.add_argument("--out", type=Path, default=RESULTS / "e2e.json")
    args = parser.parse_args()
    from bench import distilbert_shaped

    from batchsent.cpu import this_cpu

    where = this_cpu().describe()
    if args.device.startswith("cuda"):
        import torch

        where = f"{torch.cuda.get_device_name()} with {where}"
    print(f"== end to end, whole processes, {args.rows} review-mix rows, {args.device} {args.dtype} [{where}]", flush=True)
    report = {"where": where, "threads": args.threads, "results": []}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        models = {}
        if "minilm" in args.models and FIXTURE_MODEL.is_dir():
            models["minilm"] = str(FIXTURE_MODEL)
        if "distilbert" in args.models:
            models["distilbert"] = str(distilbert_shaped(scratch / "distilbert"))
        for name, model in models.items():
            report["results"].append(measure(name, model, args.rows, args, scratch))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
