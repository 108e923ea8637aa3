"""What --cache saves on a nightly run, measured on whole `batchsent score` processes.

1. Tweets-like night: 14,640 short texts (one to three SST-2 phrases, one row in ten a
   retweet) scored with the real model (../shared/models/minilm-sst2, or --model), then a
   second night over the same export with the oldest 1% of rows dropped and 1% new rows
   added. Target: the second night's wall time, model load included, at most 25% of the first.
2. Large night: 1,000,000 texts scored with a small seeded BERT (a real model would take
   hours a night here), then the same 1%-new second night (target: at most 10%), then a
   night with 0% new rows: its rows/s over the scoring phase is the lookup overhead
   (target: at least 50,000 rows/s on 2 cores).
3. Memory: a cache grown to 10,000,000 entries (random digests under the small model's
   key, added through the cache's own API), then the peak RSS of a 100,000-row night
   against it and against a fresh cache (target: at most 200 MiB more).

  python benchmarks/cache.py [--tweets 14640] [--rows 1000000] [--entries 10000000] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import FIXTURE_MODEL, sst2_phrases
from memory import small_model

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 2**20


def cpu_model() -> str:
    """The CPU's model and the flags that matter to batchsent, as `batchsent info` names them."""
    from batchsent.runtime.cpu import this_cpu

    return this_cpu().describe()


def tweet_like(rows: int, seed: int) -> list[str]:
    """Short texts of one to three phrases; about one row in ten repeats an earlier one (a retweet)."""
    phrases, rng = sst2_phrases(), random.Random(seed)
    texts: list[str] = []
    for _ in range(rows):
        if texts and rng.random() < 0.1:
            texts.append(rng.choice(texts))
        else:
            texts.append(" ".join(rng.choice(phrases) for _ in range(rng.randint(1, 3))))
    return texts


def write_night(path: Path, texts: list[str], first_id: int) -> Path:
    table = pa.table({"id": pa.array(range(first_id, first_id + len(texts)), pa.int64()), "text": texts})
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=100_000)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    return path


def next_night(texts: list[str], new_share: float, seed: int) -> list[str]:
    """Yesterday's export without its oldest ``new_share`` of rows, plus as many new ones."""
    count = round(len(texts) * new_share)
    return texts[count:] + [f"{text} (new {seed}-{i})" for i, text in enumerate(tweet_like(count, seed))]


# `batchsent` with its own peak RSS (VmHWM) written at exit: a child's ru_maxrss starts from
# its parent's at fork on Linux, and this script holds a million texts.
WITH_PEAK_RSS = """
import atexit, os, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            open(os.environ["PEAK_RSS_FILE"], "w").write(line.split()[1])
atexit.register(peak)
sys.argv[0] = "batchsent"
from batchsent.cli import main
main()
"""


def night(source: Path, output: Path, model: str, cache: Path, threads: int) -> dict:
    """One whole `batchsent score` process: wall seconds, peak RSS and its JSON summary."""
    arguments = [
        "score",
        str(source),
        "-o",
        str(output),
        "--model",
        model,
        "--cache",
        str(cache),
        "--threads",
        str(threads),
        "--overwrite",
        "-q",
        "--log-format",
        "json",
    ]
    peak_file = output.with_name(output.name + ".peak")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", WITH_PEAK_RSS, *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PEAK_RSS_FILE": str(peak_file)},
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: batchsent {' '.join(arguments)}\n{done.stderr[-2000:]}")
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    return {
        "wall_seconds": round(wall, 2),
        "peak_rss_mib": round(int(peak_file.read_text()) / 1024, 1),
        "rows": summary["rows"],
        "from_cache": summary["from_cache"],
        "duplicates": summary["duplicates"],
        "load_seconds": summary["load_seconds"],
        "scoring_rows_per_second": summary["rows_per_second"],
    }


def show(name: str, result: dict) -> None:
    print(
        f"  {name}: {result['rows']:,} rows in {result['wall_seconds']:.1f} s wall (load {result['load_seconds']:.1f} s), "
        f"{result['from_cache']:,} from the cache, {result['duplicates']:,} repeats, "
        f"scoring phase {result['scoring_rows_per_second']:,.0f} rows/s, peak RSS {result['peak_rss_mib']:,.0f} MiB",
        flush=True,
    )


def two_nights(root: Path, name: str, texts: list[str], model: str, threads: int, suffix: str) -> dict:
    cache = root / f"{name}.sqlite"
    first = night(
        write_night(root / f"{name}-1{suffix}", texts, 0), root / f"{name}-1.out{suffix}", model, cache, threads
    )
    show("night 1 (empty cache)", first)
    tomorrow = next_night(texts, 0.01, seed=99)
    second = night(
        write_night(root / f"{name}-2{suffix}", tomorrow, round(len(texts) * 0.01)),
        root / f"{name}-2.out{suffix}",
        model,
        cache,
        threads,
    )
    show("night 2 (1% new rows)", second)
    ratio = second["wall_seconds"] / first["wall_seconds"]
    print(f"  night 2 / night 1 wall time: {ratio:.1%}", flush=True)
    return {
        "night_1": first,
        "night_2_1pct_new": second,
        "wall_ratio": round(ratio, 4),
        "cache": cache,
        "tomorrow": root / f"{name}-2{suffix}",
    }


def grow_cache(cache: Path, entries: int, labels: int = 2) -> float:
    """Add ``entries`` random digests under the cache's first model key, through PredictionCache.store."""
    from batchsent.cache.store import PredictionCache

    store = PredictionCache(cache)
    run = store.start_run("bench")
    stats = store.stats()["models"][0]
    model = store.register(stats["name"], stats["description"], stats["labels"])
    rng = random.Random(5)
    start, step = time.perf_counter(), 200_000
    for offset in range(0, entries, step):
        rows = ((rng.randbytes(16), rng.randbytes(4 * labels), False, None) for _ in range(min(step, entries - offset)))
        store.store(model, run, rows, [])
    store.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tweets", type=int, default=14_640)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--model", default=str(FIXTURE_MODEL) if FIXTURE_MODEL.is_dir() else None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: tweets, large, memory")
    parser.add_argument("--out", type=Path, default=RESULTS / "cache.json")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"cpu": cpu_model(), "threads": args.threads}
    print(f"CPU: {report['cpu']}, {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        small = str(small_model(root / "small-model"))
        if "tweets" not in skip:
            model = args.model or small
            print(f"tweets-like, {args.tweets:,} rows, CSV, model {model}", flush=True)
            result = two_nights(root, "tweets", tweet_like(args.tweets, seed=1), model, args.threads, ".csv")
            again = night(result["tomorrow"], root / "tweets-3.out.csv", model, result["cache"], args.threads)
            show("night 3 (0% new rows: the model is not loaded)", again)
            report["tweets"] = {k: v for k, v in result.items() if k not in ("cache", "tomorrow")} | {
                "model": model,
                "night_3_0pct_new": again,
            }
        if "large" not in skip:
            print(f"large, {args.rows:,} rows, Parquet, small seeded BERT", flush=True)
            texts = [f"{text} #{i}" for i, text in enumerate(tweet_like(args.rows, seed=2))]  # distinct texts
            result = two_nights(root, "large", texts, small, args.threads, ".parquet")
            again = night(result["tomorrow"], root / "large-3.out.parquet", small, result["cache"], args.threads)
            show("night 3 (0% new rows)", again)
            report["large"] = {k: v for k, v in result.items() if k not in ("cache", "tomorrow")} | {
                "night_3_0pct_new": again
            }
        if "memory" not in skip:
            print(f"memory, a cache of {args.entries:,} entries", flush=True)
            texts = tweet_like(100_000, seed=3)
            source = write_night(root / "memory.parquet", texts, 0)
            fresh = night(source, root / "memory-fresh.out.parquet", small, root / "fresh.sqlite", args.threads)
            show("100,000 rows, fresh cache", fresh)
            big = root / "big.sqlite"
            night(
                write_night(root / "seed.parquet", texts[:10], 0), root / "seed.out.parquet", small, big, args.threads
            )
            seconds = grow_cache(big, args.entries)
            size = big.stat().st_size
            print(
                f"  grew the cache to {args.entries:,} more entries in {seconds:.0f} s ({size / MIB:,.0f} MiB)",
                flush=True,
            )
            loaded = night(source, root / "memory-big.out.parquet", small, big, args.threads)
            show(f"100,000 rows, {args.entries:,}-entry cache", loaded)
            extra = loaded["peak_rss_mib"] - fresh["peak_rss_mib"]
            print(f"  peak RSS added by the large cache: {extra:+.0f} MiB", flush=True)
            report["memory"] = {
                "entries": args.entries,
                "cache_mib": round(size / MIB),
                "fresh": fresh,
                "large_cache": loaded,
                "added_peak_rss_mib": round(extra, 1),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
