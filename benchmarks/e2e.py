"""End to end, whole processes, CSV in and out: `batchsent score` against the pipeline at its own settings.

Each run is its own process, timed from start to exit (imports, model load, read, score,
write), so no setting of one (the pipeline turns TOKENIZERS_PARALLELISM off for its whole
process) reaches another. The pipeline is timed as a user would run it:

  - ``pipeline bs=1``: its default (the seed's call), which never pads;
  - ``pipeline bs=32``: batched over rows in file order, which pads the most;
  - ``pipeline bs=32 sorted``: batched over rows sorted by length, put back in file order after
    (what a careful user writes).

Rounds alternate the contenders (each round starts with the next one), and every figure is
the median of the rounds, with their min and max. Each batchsent contender runs once, untimed,
before the rounds: a machine's first run of a model traces it and keeps the trace
(``batchsent.runtime.graphs``), and the rounds time the runs after it, as a user's nightly runs
are (``make bench-startup`` times the first run on its own). Ratios are stated against the fastest
pipeline setting, and against the default. ``--fast`` adds ``batchsent --precision fast``
under its own name: it never stands in for the float32 ratio.

Results go to ``benchmarks/results/e2e-<device>-<cpu class>.json`` (CPU model and flags,
versions, the command, every run); ``benchmarks/tables.py`` turns them into the README's table.

  python benchmarks/e2e.py [--rows 10,400] [--models minilm,distilbert] [--repeats 3] [--fast]
                           [--device cpu|cuda] [--dtype float32|float16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
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
PIPELINE_DEFAULT = "pipeline bs=1"

# argv: source, target, model, device, dtype, batch size, "sorted" or "file-order"
PIPELINE_JOB = """
import sys, pyarrow as pa, pyarrow.csv as pacsv, torch
from transformers import pipeline
source, target, model, device, dtype, batch_size, order = sys.argv[1:8]
table = pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(column_types={"id": pa.string(), "text": pa.string()}))
texts = table.column("text").to_pylist()
classify = pipeline("text-classification", model=model, device=device, dtype=getattr(torch, dtype))
rows = sorted(range(len(texts)), key=lambda row: len(texts[row])) if order == "sorted" else list(range(len(texts)))
results = [None] * len(texts)
for row, result in zip(rows, classify([texts[row] for row in rows], batch_size=int(batch_size), truncation=True)):
    results[row] = result
table = table.append_column("label", pa.array([r["label"] for r in results]))
table = table.append_column("score", pa.array([r["score"] for r in results], pa.float32()))
pacsv.write_csv(table, target)
"""


def timed_process(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(command)}\n{done.stderr[-2000:]}")
    return seconds


def gpu_sampler() -> subprocess.Popen | None:
    if shutil.which("nvidia-smi") is None:
        return None
    return subprocess.Popen(
        ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def mean_utilisation(sampler: subprocess.Popen | None) -> float | None:
    if sampler is None:
        return None
    sampler.terminate()
    values = [float(v) for v in sampler.communicate()[0].split() if v.replace(".", "", 1).isdigit()]
    return round(sum(values) / len(values), 1) if values else None


def labels_of(path: Path, column: str) -> list[str | None]:
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    return table.column(column).to_pylist()


def contenders(source: Path, model: str, args: argparse.Namespace, scratch: Path) -> dict[str, tuple[list[str], Path]]:
    """Each contender's command and the file it writes."""
    python = sys.executable

    def pipeline(batch_size: int, order: str) -> tuple[list[str], Path]:
        target = scratch / f"pipeline-{batch_size}-{order}.csv"
        return [
            python,
            "-c",
            PIPELINE_JOB,
            str(source),
            str(target),
            model,
            args.device,
            args.dtype,
            str(batch_size),
            order,
        ], target

    def batchsent(*flags: str) -> tuple[list[str], Path]:
        target = scratch / f"batchsent{'-'.join(flags)}.csv"
        command = [python, "-m", "batchsent", "score", str(source), "-o", str(target), "--model", model]
        command += ["--device", args.device, "--threads", str(args.threads), "-q", "--overwrite", *flags]
        return command, target

    found = {
        PIPELINE_DEFAULT: pipeline(1, "file-order"),
        "pipeline bs=32": pipeline(32, "file-order"),
        "pipeline bs=32 sorted": pipeline(32, "sorted"),
        f"batchsent {args.dtype}": batchsent("--dtype", args.dtype),
    }
    if args.fast:
        found["batchsent --precision fast"] = batchsent("--precision", "fast")
    return found


def spread(runs: list[float]) -> dict:
    return {"median": round(statistics.median(runs), 3), "min": round(min(runs), 3), "max": round(max(runs), 3)}


def measure(name: str, model: str, rows: int, args: argparse.Namespace, scratch: Path) -> dict:
    source = scratch / f"{name}-{rows}.csv"
    pacsv.write_csv(pa.table({"id": [str(i) for i in range(rows)], "text": review_mix(rows, seed=0)}), source)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    env["BATCHSENT_STATE_DIR"] = str(scratch / "state")  # the tuning --fast follows: this run's own, not the user's
    if args.fast and not (scratch / "state" / f"tuned-{name}").exists():  # tuned once per model, before any timing
        tune = [sys.executable, "-m", "batchsent", "tune", "--model", model, "--threads", str(args.threads)]
        print(f"  {name}: batchsent tune (not timed) ...", flush=True)
        print(subprocess.run(tune, capture_output=True, text=True, env=env, check=True).stdout.strip(), flush=True)
        (scratch / "state" / f"tuned-{name}").touch()
    commands = contenders(source, model, args, scratch)
    names = list(commands)
    for (
        contender
    ) in names:  # not timed: keeps the model's trace (runtime.graphs), as any run after a machine's first finds it
        if contender.startswith("batchsent"):
            timed_process(commands[contender][0], env)
    runs: dict[str, list[float]] = {contender: [] for contender in names}
    utilisation = None
    for round_ in range(args.repeats):
        for contender in names[round_ % len(names) :] + names[: round_ % len(names)]:
            command, _ = commands[contender]
            sampler = gpu_sampler() if args.device.startswith("cuda") and contender.startswith("batchsent") else None
            runs[contender].append(timed_process(command, env))
            utilisation = mean_utilisation(sampler) if sampler is not None else utilisation
        print(f"  {name}, {rows} rows, round {round_ + 1}: " + ", ".join(f"{c} {runs[c][-1]:.1f} s" for c in names))
    figures = {contender: {**spread(times), "runs": [round(t, 3) for t in times]} for contender, times in runs.items()}
    pipelines = [c for c in names if c.startswith("pipeline")]
    fastest = min(pipelines, key=lambda c: figures[c]["median"])
    reference = labels_of(commands[PIPELINE_DEFAULT][1], "label")
    result = {
        "model": name,
        "rows": rows,
        "device": args.device,
        "dtype": args.dtype,
        "seconds": figures,
        "fastest_pipeline": fastest,
        "ratios": {},
        "label_agreement_pct": {},
        "gpu_utilisation_pct": utilisation,
    }
    for contender in names:
        if not contender.startswith("batchsent"):
            continue
        median = figures[contender]["median"]
        result["ratios"][contender] = {
            "vs_fastest_pipeline": round(figures[fastest]["median"] / median, 2),
            "vs_pipeline_default": round(figures[PIPELINE_DEFAULT]["median"] / median, 2),
        }
        ours = labels_of(commands[contender][1], "sentiment_label")
        result["label_agreement_pct"][contender] = round(100 * sum(a == b for a, b in zip(reference, ours)) / rows, 2)
        print(
            f"  {name}, {rows} rows: {contender} {median:.1f} s, x{result['ratios'][contender]['vs_fastest_pipeline']} "
            f"the fastest pipeline ({fastest}, {figures[fastest]['median']:.1f} s), "
            f"x{result['ratios'][contender]['vs_pipeline_default']} its default; labels agree "
            f"{result['label_agreement_pct'][contender]}% with the default",
            flush=True,
        )
    return result


def machine(device: str) -> dict:
    """What the figures came from: the CPU (model, class, SIMD flags), the GPU, versions."""
    import torch
    import transformers

    import batchsent
    from batchsent.runtime.cpu import this_cpu

    cpu = this_cpu()
    flags = sorted(flag for flag in cpu.flags if flag.startswith(("avx", "amx", "fma", "f16c")))
    return {
        "cpu": cpu.describe(),
        "cpu_class": cpu.cpu_class,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "batchsent": getattr(batchsent, "__version__", None),
        },
        "commit": commit(),
    }


def commit() -> str | None:
    """The commit of the code measured (``-dirty`` with uncommitted changes); None outside a git checkout."""
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    return done.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10,400", help="row counts, comma-separated")
    parser.add_argument("--models", default="minilm,distilbert")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds; every figure is their median")
    parser.add_argument("--fast", action="store_true", help="add batchsent --precision fast, reported on its own")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/e2e-<device>-<cpu class>.json")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3: a median of fewer rounds says little on a shared machine")
    from bench import distilbert_shaped

    where = machine(args.device)
    out = args.out or RESULTS / f"e2e-{args.device}-{where['cpu_class']}.json"
    print(f"== end to end, whole processes, review mix, {args.device} {args.dtype} [{where['cpu']}]", flush=True)
    report = {
        "benchmark": "e2e",
        "command": shlex.join(["python", "benchmarks/e2e.py", *sys.argv[1:]]),
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": where,
        "results": [],
    }
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        models = {}
        if "minilm" in args.models and FIXTURE_MODEL.is_dir():
            models["minilm"] = str(FIXTURE_MODEL)
        if "distilbert" in args.models:
            models["distilbert"] = str(distilbert_shaped(scratch / "distilbert"))
        for name, model in models.items():
            for rows in (int(count) for count in args.rows.split(",")):
                report["results"].append(measure(name, model, rows, args, scratch))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
