"""Peak memory of `batchsent score` on large Parquet files: it must not grow with rows.

Writes Parquet files of short texts (SST-2 phrases, or synthetic without ../shared),
runs `batchsent score` on each in a fresh process, and reads that process's peak RSS
from the kernel (wait4). The model's own footprint is the peak RSS of a process that
only loads the Classifier. By default the model is a small seeded BERT so a million
rows finish in minutes on 2 cores; pass --model to measure a real one.

  python benchmarks/memory.py [--rows 100000,1000000] [--model DIR]
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

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import short_texts

RESULTS = Path(__file__).resolve().parent / "results"
BATCHSENT = [sys.executable, "-m", "batchsent"]


def write_short_text_parquet(path: Path, rows: int, group: int = 100_000) -> None:
    """A Parquet file of ``rows`` short texts, written one row group at a time."""
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, group):
            count = min(group, rows - start)
            texts = short_texts(count, seed=start)
            writer.write_table(pa.table({"id": range(start, start + count), "text": texts}, schema=schema))


def small_model(directory: Path) -> Path:
    """A seeded BERT classifier (64 hidden, 2 layers) with the real vocabulary."""
    import torch
    from bench import _tokenizer_source
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    labels = {0: "NEGATIVE", 1: "POSITIVE"}
    config = BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    AutoTokenizer.from_pretrained(_tokenizer_source()).save_pretrained(directory)
    return directory


def peak_rss(command: list[str]) -> tuple[int, float, str]:
    """(peak RSS in bytes, seconds, stderr tail) of one fresh process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start, stderr.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--model", default=None, help="model directory (default: a small seeded BERT)")
    parser.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    args = parser.parse_args()
    gib = 1024**3
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = args.model or str(small_model(root / "model"))
        load_only = [sys.executable, "-c", f"from batchsent import Classifier; Classifier({model!r}, device='cpu')"]
        footprint, _, _ = peak_rss(load_only)
        print(f"model footprint (load only): {footprint / gib:.3f} GiB", flush=True)
        report = {"model": args.model or "seeded BERT 64x2", "model_footprint_bytes": footprint, "runs": []}
        for rows in [int(r) for r in args.rows.split(",")]:
            source = root / f"short-{rows}.parquet"
            write_short_text_parquet(source, rows)
            command = [
                *BATCHSENT,
                "score",
                str(source),
                "-o",
                str(root / f"out-{rows}.parquet"),
                "--model",
                model,
                "-q",
            ]
            peak, seconds, summary = peak_rss(command)
            run = {"rows": rows, "peak_rss_bytes": peak, "seconds": round(seconds, 1), "summary": summary}
            report["runs"].append(run)
            print(
                f"{rows:>9,} rows: peak RSS {peak / gib:.3f} GiB ({(peak - footprint) / gib:+.3f} GiB over the model), "
                f"{seconds:.0f} s; {summary}",
                flush=True,
            )
    if len(report["runs"]) >= 2:
        first, last = report["runs"][0], report["runs"][-1]
        growth = last["peak_rss_bytes"] / first["peak_rss_bytes"] - 1
        report["growth_last_vs_first"] = round(growth, 4)
        print(f"peak RSS {last['rows']:,} rows vs {first['rows']:,} rows: {growth:+.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
