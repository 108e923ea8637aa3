"""The Ray engine against the local engine on the same machine: 60,000 short rows, whole processes.

Rows are real SST-2 phrases (../shared; a seeded synthetic stand-in when absent) in 6 CSV
files of 10,000; the model is MiniLM (../shared/models/minilm-sst2, else the DistilBERT
shape). Each figure is a whole ``batchsent score`` process: start-up, model load, Ray's
start-up where it applies, read, score, write. The same machine for all; threads are stated per run:
the local run gets every CPU (``--threads`` set to them, not left to torch's default), and a Ray run's
actors get CPUs // workers each (what the Ray engine gives them), so every run uses the same CPUs.

  python benchmarks/ray_scale.py [--rows 60000] [--files 6] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchsent.engine.summary import RunTotals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, distilbert_shaped
from corpus import FIXTURE_MODEL, sst2_phrases

from batchsent.runtime.cpu import this_cpu


def write_files(folder: Path, rows: int, files: int) -> None:
    phrases = sst2_phrases()
    folder.mkdir()
    per_file = rows // files
    for index in range(files):
        with open(folder / f"part-{index}.csv", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["id", "text"])
            for row in range(per_file):
                number = index * per_file + row
                writer.writerow([number, phrases[number % len(phrases)]])


def timed_run(args: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "batchsent", "score", *args, "-q"],
        capture_output=True,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {done.stderr}")
    return seconds, done.stderr.strip().splitlines()[-1]


def tiny_model(directory: Path) -> str:
    """A seeded one-layer BERT (hidden 32) with the real uncased vocabulary: model time near zero, so what a
    Ray run costs beyond it shows."""
    import torch
    from bench import _tokenizer_source
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    AutoTokenizer.from_pretrained(_tokenizer_source()).save_pretrained(directory)
    return str(directory)


def actor_waits(folder: Path) -> dict | None:
    """The model actors' time waiting for their next block, as a share of their time from the first block to
    their last (``first_wait_s``: the longest wait before an actor's first block, the pipeline filling)."""
    actors = [json.loads(path.read_text()) for path in folder.glob("actor-*.json")]
    if not actors:
        return None
    busy, waited = sum(a["busy"] for a in actors), sum(a["waited"] for a in actors)
    return {
        "actors": len(actors),
        "busy_s": round(busy, 1),
        "waited_s": round(waited, 1),
        "wait_share": round(waited / max(busy + waited, 1e-9), 3),
        "first_wait_s": round(max(a["first_wait"] or 0 for a in actors), 1),
    }


def block_overhead(root: Path, rows: int) -> dict:
    """Ray's cost per block: the tiny model over the same rows in blocks of 4,000 and of 250 rows."""
    model = tiny_model(root / "tiny")
    timings = {}
    for chunk in (4000, 250):
        seconds, _ = timed_run(
            [
                str(root / "in"),
                "--engine",
                "ray",
                "--model",
                model,
                "--chunk-rows",
                str(chunk),
                "-o",
                str(root / f"tiny-{chunk}"),
            ]
        )
        timings[chunk] = seconds
    files = len(list((root / "in").iterdir()))
    blocks = {chunk: files * -(-(rows // files) // chunk) for chunk in timings}
    per_block = (timings[250] - timings[4000]) / (blocks[250] - blocks[4000])
    print(
        f"  Ray per-block overhead (tiny model): {timings[4000]:.1f} s in {blocks[4000]} blocks, {timings[250]:.1f} s "
        f"in {blocks[250]} blocks: {1000 * per_block:.0f} ms a block",
        flush=True,
    )
    return {"seconds": timings, "blocks": blocks, "per_block_ms": round(1000 * per_block, 1)}


def merge_rate(root: Path, rows: int = 1_000_000, per_part: int = 4096) -> dict:
    """The driver's merge alone: ``rows`` short rows in parts of ``per_part``, into one CSV."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchsent.engine.ray import dataset as ray_dataset

    phrases = sst2_phrases()
    folder = root / "parts" / "000000"
    folder.mkdir(parents=True)
    for first in range(0, rows, per_part):
        count = min(per_part, rows - first)
        numbers = np.arange(first, first + count)
        pq.write_table(
            pa.table(
                {
                    "id": [str(n) for n in numbers],
                    "text": [phrases[n % len(phrases)] for n in numbers],
                    "sentiment_label": ["POSITIVE"] * count,
                    "sentiment_score": pa.array(np.full(count, 0.9, np.float32)),
                    ray_dataset.FILE: pa.array(np.zeros(count, np.int32)),
                    ray_dataset.ROW: pa.array(numbers),
                    ray_dataset.ROW_ID: pa.array(numbers),
                    ray_dataset.truncated_column(0): pa.array(np.zeros(count, bool)),
                }
            ),
            folder / f"{first:012d}.parquet",
        )
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    added = [pa.field("sentiment_label", pa.string()), pa.field("sentiment_score", pa.float32())]
    started = time.perf_counter()
    ray_dataset.merge_parts(
        str(root / "parts"),
        0,
        "bench",
        schema,
        added,
        ["sentiment_label"],
        root / "merged.csv",
        rows,
        RunTotals(),
    )
    seconds = time.perf_counter() - started
    size = (root / "merged.csv").stat().st_size
    print(
        f"  driver merge: {rows:,} rows ({size / 2**20:.0f} MiB of CSV) in {seconds:.1f} s: {rows / seconds:,.0f} rows/s, "
        f"{size / 2**20 / seconds:.0f} MiB/s",
        flush=True,
    )
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "mib_per_s": round(size / 2**20 / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--overhead-only", action="store_true", help="only Ray's per-block overhead")
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also two nights with --cache (the second finds every text)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ray_scale.json")
    args = parser.parse_args()
    report = {"cpu": this_cpu().describe(), "rows": args.rows, "files": args.files, "runs": []}
    print(f"CPU: {report['cpu']}; {args.rows:,} short rows in {args.files} CSV files; whole processes", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = str(FIXTURE_MODEL) if FIXTURE_MODEL.is_dir() else str(distilbert_shaped(root / "distilbert"))
        write_files(root / "in", args.rows, args.files)
        if args.overhead_only:
            report["block_overhead"] = block_overhead(root, args.rows)
            report["merge"] = merge_rate(root)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_name("ray_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
            return
        cpus = len(os.sched_getaffinity(0))
        report["threads"] = {
            "local": cpus,
            "ray actors": {f"{w} worker(s)": cpus // int(w) for w in args.workers.split(",")},
        }
        runs = [
            (
                f"local, {cpus} threads",
                [str(root / "in"), "--model", model, "-o", str(root / "local"), "--threads", str(cpus)],
            )
        ]
        for workers in args.workers.split(","):
            runs.append(
                (
                    f"ray, {workers} worker(s) of {cpus // int(workers)} threads",
                    [
                        str(root / "in"),
                        "--engine",
                        "ray",
                        "--workers",
                        workers,
                        "--model",
                        model,
                        "-o",
                        str(root / f"ray-{workers}"),
                    ],
                )
            )
        if args.cache:
            workers = args.workers.split(",")[-1]
            for night in ("first", "second"):
                runs.append(
                    (
                        f"ray, {workers} worker(s), --cache, {night} night",
                        [
                            str(root / "in"),
                            "--engine",
                            "ray",
                            "--workers",
                            workers,
                            "--model",
                            model,
                            "--cache",
                            str(root / "cache"),
                            "-o",
                            str(root / f"ray-cache-{night}"),
                        ],
                    )
                )
        local_rate = None
        for name, run_args in runs:
            timings = root / f"timings-{len(report['runs'])}"
            timings.mkdir()
            seconds, summary = timed_run(run_args, {"BATCHSENT_RAY_TIMINGS": str(timings)})
            rate = args.rows / seconds
            local_rate = local_rate or rate
            waits = actor_waits(timings)
            report["runs"].append(
                {
                    "engine": name,
                    "seconds": round(seconds, 1),
                    "rows_per_s": round(rate, 1),
                    "share_of_local": round(rate / local_rate, 3),
                    "summary": summary,
                    "actors": waits,
                }
            )
            wait = (
                f"  actors waited {waits['wait_share']:.1%} (+{waits['first_wait_s']:.1f} s before the first block)"
                if waits
                else ""
            )
            print(
                f"  {name:20} {seconds:7.1f} s  {rate:7.1f} rows/s  {rate / local_rate:6.1%} of local{wait}", flush=True
            )
        report["block_overhead"] = block_overhead(root, args.rows)
        report["merge"] = merge_rate(root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out} (CPU: {report['cpu']})")


if __name__ == "__main__":
    main()
