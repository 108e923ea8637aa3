"""What keying a model folder by the content of its files costs: the first hash, then the remembered one.

Builds the DistilBERT-base-shaped folder (268 MB of safetensors) and times
``identity.model_identity`` with an empty hash memo, then again (memo hit), then after
``cp -p`` of the weights over themselves (same size and mtime, new ctime: hashed again).

  python benchmarks/model_key.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import distilbert_shaped


def _timed(folder: Path) -> float:
    from batchsent.state.identity import model_identity

    started = time.perf_counter()
    model_identity(str(folder), None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        os.environ["BATCHSENT_STATE_DIR"] = str(Path(root) / "state")
        folder = distilbert_shaped(Path(root) / "distilbert")
        weights = folder / "model.safetensors"
        size = sum(f.stat().st_size for f in folder.iterdir())
        from batchsent.runtime.cpu import this_cpu

        print(
            f"CPU: {this_cpu().describe()}; folder {size / 1e6:,.0f} MB (in the page cache: hashing, not disk reads)",
            flush=True,
        )
        for repeat in range(arguments.repeats):
            shutil.rmtree(Path(root) / "state", ignore_errors=True)
            first = _timed(folder)
            remembered = _timed(folder)
            copy = Path(root) / "copy.safetensors"
            shutil.copy2(weights, copy)
            os.replace(copy, weights)  # same bytes, size and mtime, another inode and ctime: hashed again
            after_copy = _timed(folder)
            print(
                f"  run {repeat + 1}: first hash {first:.3f} s ({size / first / 1e6:,.0f} MB/s), remembered "
                f"{remembered * 1000:.1f} ms, after cp -p {after_copy:.3f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
