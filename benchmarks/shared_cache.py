"""The shared cache of --engine ray, alone: adding entries, and looking blocks up cold and warm.

A cache of ``--entries`` texts for one model key (two labels) in a local folder, and, with
``--s3``, on moto's S3 server on loopback (which measures moto and the client, not a real
object store). Lookups are blocks of 4,096 digests, 99% of them in the cache, as a nightly
export with 1% new texts asks them; "cold" is a new worker process reading the buckets,
"warm" the same worker on its next blocks.

  python benchmarks/shared_cache.py [--entries 1000000] [--s3]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench import RESULTS

from batchsent.cache.shared import SharedCache, entries_table
from batchsent.cache.store import digest
from batchsent.runtime.cpu import this_cpu

BLOCK = 4096
DESCRIPTION = {"model": {"hub_id": "bench"}, "dtype": "float32"}


def measure(location: str, entries: int, blocks: int) -> dict:
    cache = SharedCache(location)
    model = cache.register("bench", DESCRIPTION, ["NEGATIVE", "POSITIVE"])
    rng = np.random.default_rng(0)
    digests = [digest(f"text {i}") for i in range(entries)]
    started = time.perf_counter()
    for start in range(0, entries, 500_000):  # as the merge flushes them
        part = digests[start : start + 500_000]
        values = rng.random((len(part), 2), dtype=np.float32)
        cache.add(model.key, entries_table(part, values, [False] * len(part), [None] * len(part), int(time.time()), 2))
    added = time.perf_counter() - started
    asked = [
        [digests[i] if rng.random() < 0.99 else digest(f"new {b} {i}") for i in rng.integers(0, entries, BLOCK)]
        for b in range(blocks)
    ]
    reader = SharedCache(location, create=False)
    started = time.perf_counter()
    hits = int(reader.lookup(model, asked[0], 2).hit.sum())
    cold = time.perf_counter() - started
    started = time.perf_counter()
    for block in asked[1:]:
        hits += int(reader.lookup(model, block, 2).hit.sum())
    warm = time.perf_counter() - started
    started = time.perf_counter()
    counted = reader.stats()["entries"]
    stats = time.perf_counter() - started
    return {
        "entries": entries,
        "add_s": round(added, 2),
        "add_entries_per_s": round(entries / added),
        "cold_first_block_s": round(cold, 2),
        "warm_lookups_per_s": round(BLOCK * (blocks - 1) / warm),
        "hit_share": round(hits / (BLOCK * blocks), 4),
        "stats_s": round(stats, 2),
        "stats_entries": counted,
        "bytes": reader.size_bytes(),
    }


def show(where: str, figures: dict) -> None:
    print(
        f"  {where}: {figures['entries']:,} entries added in {figures['add_s']} s ({figures['add_entries_per_s']:,}/s, "
        f"{figures['bytes'] / 2**20:.0f} MiB); first block of {BLOCK:,} cold {figures['cold_first_block_s']} s "
        f"(every bucket read); then {figures['warm_lookups_per_s']:,} lookups/s warm "
        f"({figures['hit_share']:.1%} hits); stats {figures['stats_s']} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--blocks", type=int, default=50)
    parser.add_argument("--s3", action="store_true", help="also on moto's S3 server on loopback")
    parser.add_argument("--out", type=Path, default=RESULTS / "shared_cache.json")
    args = parser.parse_args()
    report = {"cpu": this_cpu().describe(), "block": BLOCK}
    print(f"CPU: {report['cpu']}; blocks of {BLOCK:,} digests, 99% in the cache", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        report["folder"] = measure(str(Path(scratch) / "cache"), args.entries, args.blocks)
        show("local folder", report["folder"])
    if args.s3:
        from test_storage import start_s3_server

        process, endpoint = start_s3_server()
        try:
            os.environ.update(
                {
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true",
                }
            )
            import boto3

            boto3.client("s3").create_bucket(Bucket="bench")
            report["moto_s3"] = measure("s3://bench/cache", args.entries, args.blocks)
            show("moto S3 on loopback", report["moto_s3"])
        finally:
            process.terminate()
            process.wait(timeout=10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out} (CPU: {report['cpu']})")


if __name__ == "__main__":
    main()
