"""The README's performance tables, made from the committed results in ``benchmarks/results/``.

Each table sits in the README between ``<!-- tables:NAME -->`` and ``<!-- /tables:NAME -->``;
nothing between the markers is written by hand. ``tests/test_readme_tables.py`` checks that
the README holds what these results give.

  python benchmarks/tables.py           # rewrite the README's tables
  python benchmarks/tables.py --check   # exit 1 when the README differs from the results
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

MODEL_NAMES = {"minilm": "MiniLM-L6 SST-2", "distilbert": "DistilBERT shape (seeded weights)"}


def _seconds(figure: dict) -> str:
    return f"{figure['median']:.1f} s ({figure['min']:.1f}–{figure['max']:.1f})"


def _measured_at(where: dict) -> str:
    """Which code was measured: the commit a results file names (older files say it in a note)."""
    if where.get("commit"):
        return f"; batchsent at {where['commit']}"
    return f"; {where['note']}" if where.get("note") else ""


def e2e_table() -> str:
    """Whole processes per results file (one per device and CPU class): every contender's median seconds with
    min and max, and batchsent's ratios against the fastest pipeline setting and the pipeline's default."""
    blocks = []
    for path in sorted(RESULTS.glob("e2e-*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        where = report["machine"]
        device = where["gpu"] or f"{where['cpu']}, {report['threads']} threads"
        contenders = list(report["results"][0]["seconds"])
        ours = [name for name in contenders if name.startswith("batchsent")]
        header = ["model", "rows", *contenders] + [
            f"{name}: vs fastest pipeline / vs default (labels as the default's)" for name in ours
        ]
        lines = [
            f"**{device}** (`{path.relative_to(ROOT)}`; median of {report['repeats']} alternated whole-process runs, "
            f"min–max in brackets; torch {where['versions']['torch']}, transformers {where['versions']['transformers']}; "
            f"`{report['command']}`{_measured_at(where)})",
            "",
            "| " + " | ".join(header) + " |",
            "| " + " | ".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + " |",
        ]
        for result in report["results"]:
            cells = [MODEL_NAMES.get(result["model"], result["model"]), str(result["rows"])]
            for name in contenders:
                cell = _seconds(result["seconds"][name])
                cells.append(f"**{cell}**" if name == result["fastest_pipeline"] else cell)
            for name in ours:
                ratios = result["ratios"][name]
                agree = result["label_agreement_pct"][name]
                cells.append(
                    f"{ratios['vs_fastest_pipeline']:.2f}x / {ratios['vs_pipeline_default']:.2f}x ({agree:g}%)"
                )
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    if not blocks:
        return "No end-to-end results are committed yet: run `make bench-e2e`."
    return "\n\n".join(blocks) + "\n\nBold: the fastest pipeline setting, which the first ratio is taken against."


def startup_table() -> str:
    """Start-up per results file: whole processes (median, min–max) and the phases of one start-up."""
    blocks = []
    for path in sorted(RESULTS.glob("startup-*.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        where = report["machine"]
        lines = [
            f"**{where['cpu']}, {report['threads']} threads**, model `{report['model']}` "
            f"(`{path.relative_to(ROOT)}`; median of {report['repeats']} alternated rounds, min–max in brackets; "
            f"`{report['command']}`{_measured_at(report['machine'])}): batchsent's 10-row run takes {report['share_of_pipeline_pct']:g}% of the "
            "pipeline script's time.",
            "",
            "| whole process | seconds | | phase of one start-up, in order | seconds |",
            "| --- | ---: | --- | --- | ---: |",
        ]
        whole, phases = list(report["whole_processes"].items()), list(report["phases"].items())
        for index in range(max(len(whole), len(phases))):
            cells = []
            for pairs in (whole, phases):
                if index < len(pairs):
                    name, figure = pairs[index]
                    cells += [name, f"{figure['median']:.2f} ({figure['min']:.2f}–{figure['max']:.2f})"]
                else:
                    cells += ["", ""]
            lines.append(f"| {cells[0]} | {cells[1]} | | {cells[2]} | {cells[3]} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) or "No start-up results are committed yet: run `make bench-startup`."


def variants_table(pattern: str, make: str) -> str:
    """Runners against float32 per results file (``make bench-onnx-variants``, ``make bench-openvino``): median
    rows/s, the ratio to float32 in each interleaved round (min–max), labels as float32's and, where measured,
    the share of this CPU's GEMM peak."""
    blocks = []
    for path in sorted(RESULTS.glob(pattern)):
        report = json.loads(path.read_text(encoding="utf-8"))
        where = report["machine"]
        peaks = report.get("gemm_peak_gflops")
        header = ["model", "runner", "rows/s", "vs float32 (by round, min–max)", "labels as float32's"]
        peak_note = ""
        if peaks:
            header.append("share of the GEMM peak")
            peak_note = "; GEMM peak, GFLOP/s: " + ", ".join(f"{name} {rate:,.0f}" for name, rate in peaks.items())
        lines = [
            f"**{where['cpu']}, {report['threads']} threads** (`{path.relative_to(ROOT)}`; median of "
            f"{report['rounds']} interleaved rounds; `{report['command']}`{_measured_at(where)}{peak_note})",
            "",
            "| " + " | ".join(header) + " |",
            "| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |",
        ]
        for model, result in report["models"].items():
            for runner, figure in result["variants"].items():
                ratios = figure["vs_float32_by_round"]
                cells = [
                    MODEL_NAMES.get(model, model),
                    runner,
                    f"{figure['rows_per_second']:.1f}",
                    f"{min(ratios):.2f}–{max(ratios):.2f}x",
                    f"{figure['agreement_pct']:.2f}%",
                ]
                if peaks:
                    share = figure.get("share_of_gemm_peak")  # "62% of float32 307.0 GFLOP/s"
                    cells.append(" ".join(share.split()[:3]) if share else "-")
                lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) or f"No results are committed yet: run `{make}`."


TABLES = {
    "e2e": e2e_table,
    "startup": startup_table,
    "onnx-variants": lambda: variants_table("onnx-variants-*.json", "make bench-onnx-variants"),
    "openvino": lambda: variants_table("openvino-*.json", "make bench-openvino"),
}


def rendered(readme: str) -> str:
    """``readme`` with each marked table replaced by what the results give."""
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- tables:{name} -->\n).*?(<!-- /tables:{name} -->)", re.DOTALL)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- tables:{name} --> ... <!-- /tables:{name} --> markers")
        readme = pattern.sub(lambda match, make=make: match.group(1) + make() + "\n" + match.group(2), readme)
    return readme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when the README differs from the results")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    wanted = rendered(current)
    if args.check:
        if wanted != current:
            sys.exit("README.md's tables differ from benchmarks/results/: run python benchmarks/tables.py")
        return
    README.write_text(wanted, encoding="utf-8")


if __name__ == "__main__":
    main()
