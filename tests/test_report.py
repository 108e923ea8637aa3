"""batchsent report: exact statistics, escaping, no external requests, a real browser."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchsent.cli import app
from batchsent.report.page import render
from batchsent.report.stats import HISTOGRAM_BINS, ReportOptions, collect, metrics, top_groups

runner = CliRunner()
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture
def known(tmp_path) -> Path:
    """Ten scored rows with known labels, scores, groups and gold labels (one blank row)."""
    table = pa.table(
        {
            "text": [
                "great",
                "awful",
                "fine",
                "<script>alert('x')</script> bad",
                "",
                "superb",
                "meh",
                "love",
                "hate",
                "ok",
            ],
            "shop": ["a", "a", "b", "b", "b", "c", "c", "c", "c", "a"],
            "gold": [
                "POSITIVE",
                "NEGATIVE",
                "NEGATIVE",
                "NEGATIVE",
                None,
                "POSITIVE",
                "POSITIVE",
                "POSITIVE",
                "NEGATIVE",
                "POSITIVE",
            ],
            "sentiment_label": [
                "POSITIVE",
                "NEGATIVE",
                "POSITIVE",
                "NEGATIVE",
                None,
                "POSITIVE",
                "NEGATIVE",
                "POSITIVE",
                "NEGATIVE",
                "POSITIVE",
            ],
            "sentiment_score": pa.array([0.99, 0.97, 0.55, 0.51, None, 0.98, 0.58, 0.91, 0.999, 0.62], pa.float32()),
        }
    )
    path = tmp_path / "scored.parquet"
    pq.write_table(table, path)
    return path


def test_counts_histograms_breakdowns_and_metrics_are_exact(known):
    stats = collect(known, ReportOptions(by="shop", gold="gold", examples=2, low_confidence=0.6))
    assert (stats.rows, stats.scored, stats.empty, stats.low_confidence) == (10, 9, 1, 3)
    assert dict(stats.label_counts) == {"POSITIVE": 5, "NEGATIVE": 4}
    positive = np.zeros(HISTOGRAM_BINS, int)
    for score in (0.99, 0.55, 0.98, 0.91, 0.62):
        positive[min(int(np.float32(score) * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
    assert stats.histograms["POSITIVE"].tolist() == positive.tolist()
    assert {k: dict(v) for k, v in stats.groups.items()} == {
        "a": {"POSITIVE": 2, "NEGATIVE": 1},
        "b": {"POSITIVE": 1, "NEGATIVE": 1},
        "c": {"POSITIVE": 2, "NEGATIVE": 2},
    }
    accuracy, rows, gold_axis, predicted_axis = metrics(stats)
    assert accuracy == pytest.approx(7 / 9)
    by_label = {m.label: m for m in rows}
    # POSITIVE: predicted 5, correct 4 (rows 1, 6, 8, 10), gold 5 -> precision 0.8, recall 0.8
    assert (by_label["POSITIVE"].precision, by_label["POSITIVE"].recall) == (pytest.approx(0.8), pytest.approx(0.8))
    # NEGATIVE: predicted 4, correct 3, gold 4 -> 0.75 / 0.75
    assert by_label["NEGATIVE"].f1 == pytest.approx(0.75) and by_label["NEGATIVE"].support == 4
    assert gold_axis == ["NEGATIVE", "POSITIVE"] and predicted_axis == ["POSITIVE", "NEGATIVE"]
    least = sorted(stats.least_confident, reverse=True)
    assert [(row, round(-score, 2)) for score, row, _, _ in least] == [(4, 0.51), (3, 0.55)]
    best_negative = sorted(stats.most_confident["NEGATIVE"], reverse=True)
    assert [(-row, text) for _, row, text in best_negative] == [(9, "hate"), (2, "awful")]


def test_heaps_and_groups_stay_bounded(tmp_path):
    rows = 50_000
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "text": [f"review {i}" for i in range(rows)],
            "shop": [f"shop {i % 40}" for i in range(rows)],
            "sentiment_label": rng.choice(["NEGATIVE", "POSITIVE"], rows).tolist(),
            "sentiment_score": rng.uniform(0.5, 1.0, rows).astype(np.float32),
        }
    )
    path = tmp_path / "big.parquet"
    pq.write_table(table, path)
    stats = collect(path, ReportOptions(by="shop", examples=3))
    assert len(stats.least_confident) == 3 and all(len(h) == 3 for h in stats.most_confident.values())
    assert len(top_groups(stats)) == 11 and top_groups(stats)[-1][0] == "other"
    assert sum(sum(c.values()) for _, c in top_groups(stats)) == rows


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.references: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        self.references += [value or "" for name, value in attrs if name in ("src", "href")]


def test_hostile_text_is_escaped_and_nothing_is_fetched(known):
    html = render(collect(known, ReportOptions(by="shop", gold="gold")))
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; bad" in html
    parser = Links()
    parser.feed(html)
    assert parser.scripts == 0
    assert all("http" not in ref and not ref.startswith("//") for ref in parser.references)
    assert html.count("<svg") == 4  # labels, histograms, groups, confusion matrix


def test_report_command_and_its_bad_inputs(known, tmp_path):
    output = tmp_path / "report.html"
    ok = runner.invoke(app, ["report", str(known), "-o", str(output), "--by", "shop", "--gold", "gold"])
    assert ok.exit_code == 0, ok.stderr
    assert output.read_text().startswith("<!DOCTYPE html>")

    def fails(*args: str) -> str:
        result = runner.invoke(app, ["report", *args])
        assert result.exit_code == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        return line

    assert "no prediction columns 'p_label', 'p_score'" in fails(str(known), "--prefix", "p_")
    assert "another --prefix" in fails(str(known), "--prefix", "p_")
    assert "--by 'region' is not a column; the file has 'text', 'shop'" in fails(str(known), "--by", "region")
    assert "--gold 'truth' is not a column" in fails(str(known), "--gold", "truth")
    assert "share no value with the model's labels (gold: a, b, c; model: NEGATIVE, POSITIVE)" in fails(
        str(known), "--gold", "shop"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "scored.parquet"]


def test_score_writes_a_report_at_the_end(tmp_path, binary_model):
    source = tmp_path / "reviews.csv"
    source.write_bytes((SAMPLE / "reviews.csv").read_bytes())
    report = tmp_path / "run.html"
    result = runner.invoke(app, ["score", str(source), "--model", str(binary_model), "--report", str(report)])
    assert result.exit_code == 0, result.stderr
    html = report.read_text()
    assert ">42</b><span>rows</span>" in html and ">0</b><span>truncated</span>" in html


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (.ci/run installs it)")
def test_a_real_browser_renders_the_sample_report(tmp_path, binary_model):
    from matplotlib.image import imread

    source = tmp_path / "reviews.csv"
    source.write_bytes((SAMPLE / "reviews.csv").read_bytes())
    assert runner.invoke(app, ["score", str(source), "--model", str(binary_model)]).exit_code == 0
    report = tmp_path / "report.html"
    assert (
        runner.invoke(
            app, ["report", str(tmp_path / "reviews.scored.csv"), "-o", str(report), "--by", "product"]
        ).exit_code
        == 0
    )
    screenshot = tmp_path / "shot.png"
    browser = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
            "--window-size=1200,2400",
            f"--screenshot={screenshot}",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert screenshot.exists(), browser.stderr
    console = [line for line in browser.stderr.splitlines() if "CONSOLE" in line or "Failed to load resource" in line]
    assert console == []
    pixels = imread(screenshot)[:, :, :3]
    height = pixels.shape[0]
    chart_blue = np.all(np.abs(pixels - np.array([0x3B, 0x6F, 0xB6]) / 255) < 0.02, axis=2)
    chart_red = np.all(np.abs(pixels - np.array([0xD1, 0x49, 0x5B]) / 255) < 0.02, axis=2)
    rows_blue = np.flatnonzero(chart_blue.any(axis=1))
    # the label chart sits in the first screen, below the header cards; charts further down have bars too
    assert chart_blue.sum() > 2000 and chart_red.sum() > 2000
    assert 150 < rows_blue.min() < height / 3
    assert rows_blue.max() > height / 3
