"""Peak memory of `batchsent report` on large scored Parquet files (default 1M and 10M rows).

python benchmarks/report_memory.py [--rows 1000000,10000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import BATCHSENT, peak_rss


def write_scored(path: Path, rows: int, group: int = 1_000_000) -> None:
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(
        path,
        pa.schema(
            [
                ("text", pa.string()),
                ("product", pa.string()),
                ("sentiment_label", pa.string()),
                ("sentiment_score", pa.float32()),
            ]
        ),
    ) as out:
        for start in range(0, rows, group):
            n = min(group, rows - start)
            labels = rng.choice(np.array(["NEGATIVE", "POSITIVE"], dtype=object), n)
            out.write_table(
                pa.table(
                    {
                        "text": pa.array([f"review {i}" for i in range(start, start + n)]),
                        "product": pa.array(
                            rng.choice(np.array([f"product {k}" for k in range(500)], dtype=object), n)
                        ),
                        "sentiment_label": pa.array(labels),
                        "sentiment_score": pa.array(rng.uniform(0.5, 1.0, n).astype(np.float32)),
                    }
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000,10000000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for rows in [int(r) for r in args.rows.split(",")]:
            source = Path(scratch) / f"scored-{rows}.parquet"
            write_scored(source, rows)
            command = [*BATCHSENT, "report", str(source), "-o", str(Path(scratch) / "r.html"), "--by", "product"]
            peak, seconds, _ = peak_rss(command)
            print(f"{rows:>11,} rows: peak RSS {peak / 2**30:.3f} GiB, {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
