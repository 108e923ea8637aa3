"""Where a small run's time goes: a 10-row file, whole processes, and the phases of batchsent's own start-up.

Whole processes, alternated over rounds (median, min, max): the interpreter alone, ``import torch``,
``import batchsent.cli``, ``batchsent score`` on 10 review-mix rows (as every run after a machine's first
runs: the model's trace kept, see ``batchsent.runtime.graphs``; as a machine's first run, which traces it;
and with traces turned off), and the pipeline script (``benchmarks/e2e.py``'s, at its default batch size)
on the same file. Then, in one fresh process per round, the phases of a run in the order batchsent takes
them: torch, batchsent, the tokenizer and config (the kept setup, see ``batchsent.model.setup``), the weights
(the kept trace), the first batch; and, outside the total, the imports a first run pays: transformers with
its tokenizer classes, and its modeling code. The phases are timed with the real loading functions batchsent
calls (``Classifier``).

  python benchmarks/startup.py [--model DIR] [--repeats 3] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import e2e  # noqa: E402
from corpus import FIXTURE_MODEL, review_mix  # noqa: E402
from e2e import PIPELINE_JOB, machine  # noqa: E402

RESULTS = HERE / "results"

# argv: model. Prints one JSON object: seconds per phase, in order.
PHASES = """
import json, sys, time
start = last = time.perf_counter()
phases = {}
def lap(name):
    global last
    now = time.perf_counter(); phases[name] = round(now - last, 3); last = now
import torch; lap("import torch")
import batchsent.cli; lap("import batchsent (cli)")
from batchsent.model.classifier import Classifier
classifier = Classifier(sys.argv[1], device="cpu", weights=False)
lap(f"Classifier: tokenizer, config ({'transformers' if classifier._pretrained else 'kept setup'})")
classifier.load_weights(); lap(f"weights (graph: {classifier.graph or 'none, eager model'})")
classifier.predict(["a first batch of one short review"]); lap("first batch (kernels, allocator)")
classifier.predict(["the second batch, warm"]); lap("second batch")
phases["total"] = round(last - start, 3)
assert "transformers" not in sys.modules or classifier._pretrained
from transformers import AutoConfig, AutoTokenizer; lap("not in total: transformers and its tokenizer classes, as a first run imports them")
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING as mapping
mapping[type(AutoConfig.from_pretrained(sys.argv[1]))]; lap("not in total: transformers' modeling code, as a first run imports it")
print(json.dumps(phases))
"""


FIRST_RUN = "batchsent score, 10 rows, first run (traces)"
EAGER = "batchsent score, 10 rows, BATCHSENT_GRAPHS=off"


def special_env(name: str, env: dict[str, str], scratch: Path, round_: int) -> dict[str, str]:
    """The first run gets a state folder of its own (nothing kept yet); the eager run has graphs turned off."""
    if name == FIRST_RUN:
        return env | {"BATCHSENT_STATE_DIR": str(scratch / f"first-{round_}")}
    if name == EAGER:
        return env | {"BATCHSENT_GRAPHS": "off"}
    return env


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(command)}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def spread(runs: list[float]) -> dict:
    return {**e2e.spread(runs), "runs": [round(r, 3) for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(FIXTURE_MODEL))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/startup-<cpu class>.json")
    args = parser.parse_args()
    if not Path(args.model).is_dir():
        raise SystemExit(f"{args.model}: no model folder; pass --model DIR")
    where = machine("cpu")
    out = args.out or RESULTS / f"startup-{where['cpu_class']}.json"
    python = sys.executable
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        # A state folder (file hashes, the kept trace) warmed by one run before the rounds: what every run after
        # a machine's first sees. The first run is timed with a new, empty one each round.
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            OMP_NUM_THREADS=str(args.threads),
            BATCHSENT_STATE_DIR=str(scratch / "state"),
        )
        source = scratch / "ten.csv"
        pacsv.write_csv(pa.table({"id": [str(i) for i in range(10)], "text": review_mix(10, seed=0)}), source)
        score = [python, "-m", "batchsent", "score", str(source), "-o", str(scratch / "o.csv"), "--model", args.model]
        score += ["--threads", str(args.threads), "-q", "--overwrite"]
        timed(score, env)
        processes = {
            "python -c pass": [python, "-c", "pass"],
            "import torch": [python, "-c", "import torch"],
            "import batchsent.cli": [python, "-c", "import batchsent.cli"],
            "batchsent score, 10 rows": score,
            FIRST_RUN: score,
            EAGER: score,
            "pipeline script, 10 rows": [
                python,
                "-c",
                PIPELINE_JOB,
                str(source),
                str(scratch / "p.csv"),
                args.model,
                "cpu",
                "float32",
                "1",
                "file-order",
            ],
            "phases": [python, "-c", PHASES, args.model],
        }
        names = list(processes)
        runs: dict[str, list[float]] = {name: [] for name in names}
        phases: list[dict[str, float]] = []
        for round_ in range(args.repeats):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                seconds, stdout = timed(processes[name], special_env(name, env, scratch, round_))
                runs[name].append(seconds)
                if name == "phases":
                    phases.append(json.loads(stdout.strip().splitlines()[-1]))
    whole = {name: spread(times) for name, times in runs.items() if name != "phases"}
    breakdown = {phase: spread([p[phase] for p in phases if phase in p]) for phase in phases[0]}
    ours, theirs = whole["batchsent score, 10 rows"]["median"], whole["pipeline script, 10 rows"]["median"]
    print(f"== start-up, whole processes, median of {args.repeats} alternated rounds [{where['cpu']}]")
    for name, figure in whole.items():
        print(f"  {name:28s} {figure['median']:6.2f} s  ({figure['min']:.2f}-{figure['max']:.2f})")
    print(f"  batchsent's 10-row run takes {100 * ours / theirs:.0f}% of the pipeline script's time")
    print("== phases of one process, in the order a run takes them")
    for phase, figure in breakdown.items():
        print(f"  {phase:40s} {figure['median']:6.3f} s  ({figure['min']:.3f}-{figure['max']:.3f})")
    report = {
        "benchmark": "startup",
        "command": shlex.join(["python", "benchmarks/startup.py", *sys.argv[1:]]),
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": where,
        "model": Path(args.model).name,
        "whole_processes": whole,
        "share_of_pipeline_pct": round(100 * ours / theirs, 1),
        "phases": breakdown,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
