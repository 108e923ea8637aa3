"""Several models in one pass against one run per model: whole processes, review mix, CSV in and out.

For N models that share a tokenizer, times N separate `batchsent score` runs (one model
each) and one run with `--model NAME=MODEL` N times, on the same file, threads and
machine; reports the one pass as a share of the N runs, and checks that every model's
labels and scores in the one pass equal its own run's (within 1e-5).

On CUDA (``--device cuda``), GPU utilisation is sampled with nvidia-smi over the N runs
together and over the one pass: the one pass should keep the GPU busier.

  python benchmarks/models.py [--rows 400] [--counts 2,3] [--threads 2] [--repeats 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import FIXTURE_MODEL, review_mix  # noqa: E402
from e2e import gpu_sampler, mean_utilisation  # noqa: E402

RESULTS = HERE / "results"


def minilm_shaped(directory: Path, seed: int) -> Path:
    """A seeded random classifier with MiniLM-L6's dimensions and the same tokenizer (a stand-in second model)."""
    import torch
    from bench import _tokenizer_source
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    labels = {0: "NEGATIVE", 1: "POSITIVE"}
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    AutoTokenizer.from_pretrained(_tokenizer_source()).save_pretrained(directory)
    return directory


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def columns(path: Path) -> pa.Table:
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))


def measure(models: dict[str, str], source: Path, scratch: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    base = [
        sys.executable,
        "-m",
        "batchsent",
        "score",
        str(source),
        "--threads",
        str(args.threads),
        "-q",
        "--overwrite",
        "--device",
        args.device,
    ]
    singles, together, busy = [], [], {"separate": [], "one_pass": []}
    gpu = args.device.startswith("cuda")
    for _ in range(args.repeats):  # alternate, so drift on the machine hits both sides alike
        seconds, sampler = 0.0, gpu_sampler() if gpu else None
        for name, model in models.items():
            seconds += timed([*base, "--model", model, "--prefix", f"{name}_", "-o", str(scratch / f"{name}.csv")], env)
        singles.append(seconds)
        busy["separate"].append(mean_utilisation(sampler))
        sampler = gpu_sampler() if gpu else None
        together.append(
            timed([*base, *(f"--model={n}={m}" for n, m in models.items()), "-o", str(scratch / "all.csv")], env)
        )
        busy["one_pass"].append(mean_utilisation(sampler))
    multi = columns(scratch / "all.csv")
    worst, same_labels = 0.0, True
    for name in models:
        single = columns(scratch / f"{name}.csv")
        same_labels &= multi.column(f"{name}_label").to_pylist() == single.column(f"{name}_label").to_pylist()
        a = np.array(multi.column(f"{name}_score").to_pylist(), dtype=float)
        b = np.array(single.column(f"{name}_score").to_pylist(), dtype=float)
        worst = max(worst, float(np.nanmax(np.abs(a - b))))
    single_s, together_s = min(singles), min(together)
    result = {
        "models": list(models),
        "rows": args.rows,
        "separate_runs_s": round(single_s, 2),
        "one_pass_s": round(together_s, 2),
        "one_pass_share_pct": round(100 * together_s / single_s, 1),
        "labels_identical": same_labels,
        "max_score_difference": worst,
        "gpu_busy_pct": busy if gpu else None,
    }
    print(
        f"  {len(models)} models ({', '.join(models)}): {len(models)} runs {single_s:.1f} s, one pass {together_s:.1f} s "
        f"= {result['one_pass_share_pct']}%; labels identical: {same_labels}; largest score difference {worst:.1e}"
        + (f"; GPU busy {busy['separate']}% over the runs, {busy['one_pass']}% in one pass" if gpu else ""),
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--counts", default="2,3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "models.json")
    args = parser.parse_args()
    from batchsent.runtime.cpu import this_cpu

    where = this_cpu().describe()
    if args.device.startswith("cuda"):
        import torch

        where = f"{torch.cuda.get_device_name()} with {where}"
    print(
        f"== several models in one pass vs one run each, whole processes, {args.rows} review-mix rows, {args.device} "
        f"(its default dtype), {args.threads} threads [{where}]",
        flush=True,
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    report = {"where": where, "threads": args.threads, "results": []}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        source = scratch / "reviews.csv"
        pacsv.write_csv(
            pa.table({"id": [str(i) for i in range(args.rows)], "text": review_mix(args.rows, seed=0)}), source
        )
        pool = {"sentiment": str(FIXTURE_MODEL) if FIXTURE_MODEL.is_dir() else str(minilm_shaped(scratch / "m0", 0))}
        for index in range(1, max(int(count) for count in args.counts.split(","))):
            pool[f"other{index}"] = str(minilm_shaped(scratch / f"m{index}", index))
        for count in (int(count) for count in args.counts.split(",")):
            report["results"].append(measure(dict(list(pool.items())[:count]), source, scratch, args, env))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
