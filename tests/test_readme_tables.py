"""The README's performance tables are what the committed benchmark results give (benchmarks/tables.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_committed_results():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert _tables().rendered(readme) == readme, "run python benchmarks/tables.py and commit the README"


def test_a_table_states_every_setting_and_ratios_against_the_fastest_pipeline(tmp_path, monkeypatch):
    tables = _tables()
    figure = lambda median: {"median": median, "min": median - 0.5, "max": median + 1, "runs": [median] * 3}  # noqa: E731
    result = {
        "benchmark": "e2e",
        "command": "python benchmarks/e2e.py",
        "threads": 2,
        "repeats": 3,
        "machine": {
            "cpu": "Some CPU (x86_64; AVX2)",
            "gpu": None,
            "versions": {"torch": "2.13.0", "transformers": "5"},
        },
        "results": [
            {
                "model": "minilm",
                "rows": 400,
                "seconds": {
                    "pipeline bs=1": figure(20.0),
                    "pipeline bs=32": figure(30.0),
                    "pipeline bs=32 sorted": figure(16.0),
                    "batchsent float32": figure(8.0),
                },
                "fastest_pipeline": "pipeline bs=32 sorted",
                "ratios": {"batchsent float32": {"vs_fastest_pipeline": 2.0, "vs_pipeline_default": 2.5}},
                "label_agreement_pct": {"batchsent float32": 99.75},
            }
        ],
    }
    (tmp_path / "e2e-cpu-x86-avx2.json").write_text(json.dumps(result))
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    table = tables.e2e_table()
    assert "Some CPU (x86_64; AVX2), 2 threads" in table and "median of 3 alternated" in table
    row = next(line for line in table.splitlines() if line.startswith("| MiniLM"))
    assert row == (
        "| MiniLM-L6 SST-2 | 400 | 20.0 s (19.5–21.0) | 30.0 s (29.5–31.0) | **16.0 s (15.5–17.0)** "
        "| 8.0 s (7.5–9.0) | 2.00x / 2.50x (99.75%) |"
    )
