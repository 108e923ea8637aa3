"""Object storage and folder runs, measured on whole `batchsent score` processes.

1. The same 1 GiB CSV scored from local disk and from a local S3 server (moto's
   standalone server on loopback, started here), into a local Parquet file, with a
   cheap model (a small seeded BERT, --max-length 32): rows/s of each and their ratio
   (target: S3 within 10% of local disk).
2. Per-file overhead of a folder run: the same rows as one file and as N files in a
   folder (target: at most 0.2 s more per file).

  python benchmarks/storage.py [--gib 1.0] [--files 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache import cpu_model
from corpus import sst2_phrases
from memory import small_model

RESULTS = Path(__file__).resolve().parent / "results"


def write_csv(path: Path, target_bytes: int, seed: int) -> int:
    """A CSV of review-length rows (about 2 KB each) up to ``target_bytes``; returns its row count."""
    phrases, rng = sst2_phrases(), random.Random(seed)
    rows = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write("id,text\n")
        written = 0
        while written < target_bytes:
            text = " ".join(rng.choice(phrases) for _ in range(40)).replace('"', "'")
            line = f'{rows},"{text}"\n'
            out.write(line)
            written += len(line)
            rows += 1
    return rows


def timed(arguments: list[str], env: dict[str, str]) -> tuple[float, dict]:
    """Wall seconds and the JSON summary of one `batchsent score` process."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "batchsent", "score", *arguments, "-q", "--log-format", "json", "--overwrite"],
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {arguments}\n{done.stderr[-2000:]}")
    return seconds, json.loads(done.stderr.strip().splitlines()[-1])


def s3_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("moto's S3 server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "storage.json")
    args = parser.parse_args()
    report: dict = {"cpu": cpu_model(), "threads": args.threads}
    print(f"CPU: {report['cpu']}, {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = str(small_model(root / "model"))
        common = ["--model", model, "--max-length", "32", "--threads", str(args.threads)]
        source = root / "big.csv"
        rows = write_csv(source, int(args.gib * 2**30), seed=1)
        size = source.stat().st_size
        print(f"{size / 2**30:.2f} GiB CSV, {rows:,} rows", flush=True)
        server, endpoint = s3_server()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        try:
            import boto3

            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            )
            client.create_bucket(Bucket="bench")
            client.upload_file(str(source), "bench", "big.csv")
            local_seconds, local = timed([str(source), "-o", str(root / "local.parquet"), *common], env)
            s3_seconds, remote = timed(["s3://bench/big.csv", "-o", str(root / "s3.parquet"), *common], env)
        finally:
            server.terminate()
        same = (root / "local.parquet").read_bytes() == (root / "s3.parquet").read_bytes()
        ratio = remote["rows_per_second"] / local["rows_per_second"]
        print(f"  local disk: {local['rows_per_second']:,.0f} rows/s ({local_seconds:.1f} s wall)", flush=True)
        print(
            f"  S3 (moto, loopback): {remote['rows_per_second']:,.0f} rows/s ({s3_seconds:.1f} s wall); "
            f"{ratio:.1%} of local; outputs identical: {same}",
            flush=True,
        )
        report["s3_vs_local"] = {
            "bytes": size,
            "rows": rows,
            "local": local,
            "s3": remote,
            "ratio": round(ratio, 4),
            "local_wall_seconds": round(local_seconds, 2),
            "s3_wall_seconds": round(s3_seconds, 2),
            "identical_outputs": same,
        }

        folder = root / "parts"
        folder.mkdir()
        per_file = 20
        lines = source.read_text(encoding="utf-8").splitlines()[1 : 1 + per_file * args.files]
        for index in range(args.files):
            part = lines[index * per_file : (index + 1) * per_file]
            (folder / f"part-{index:05d}.csv").write_text("id,text\n" + "\n".join(part) + "\n", encoding="utf-8")
        (root / "one.csv").write_text("id,text\n" + "\n".join(lines) + "\n", encoding="utf-8")
        one_seconds, _ = timed([str(root / "one.csv"), "-o", str(root / "one.out.csv"), *common], env)
        many_seconds, summary = timed([str(folder), "-o", str(root / "parts.out"), *common], env)
        overhead = (many_seconds - one_seconds) / args.files
        print(
            f"  {len(lines):,} rows as one file: {one_seconds:.1f} s; as {args.files} files: {many_seconds:.1f} s; "
            f"{overhead * 1000:.0f} ms more per file",
            flush=True,
        )
        report["folder"] = {
            "files": args.files,
            "rows": len(lines),
            "one_file_seconds": round(one_seconds, 2),
            "folder_seconds": round(many_seconds, 2),
            "overhead_per_file_seconds": round(overhead, 4),
            "summary_rows": summary["rows"],
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
