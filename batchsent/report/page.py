"""One self-contained HTML page from ReportStats: inline CSS, charts as inline SVG.

Charts are drawn with matplotlib (Agg backend) and embedded as SVG markup, so the file
makes no network request and opens on an air-gapped laptop. Every piece of text from
the data is HTML-escaped.
"""

from __future__ import annotations

import io as pyio
from collections.abc import Set
from datetime import UTC, datetime
from html import escape
from pathlib import Path

import numpy as np

from batchsent.data.formats import base_name
from batchsent.data.writers import atomic_file
from batchsent.errors import OutputError
from batchsent.report.stats import (
    HISTOGRAM_BINS,
    Agreement,
    ModelsReport,
    ReportOptions,
    ReportStats,
    collect_models,
    metrics,
    top_groups,
)

PALETTE = ["#3b6fb6", "#d1495b", "#edae49", "#66a182", "#8d6cab", "#00798c", "#c3834c", "#5c5c5c"]

STYLE = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 10px}
.meta{color:#5b6475;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:18px}
.card{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:12px 16px;min-width:120px}
.card b{display:block;font-size:22px}.card span{color:#5b6475;font-size:12px;text-transform:uppercase}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:16px 20px;margin-top:18px}
.chart svg{max-width:100%;height:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #eceef2;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f7}td.num{text-align:right;white-space:nowrap}
td.text{max-width:640px;white-space:pre-wrap;word-break:break-word}
"""


def _svg(figure) -> str:
    """A matplotlib figure as inline SVG markup (no XML prolog, no metadata)."""
    import matplotlib.pyplot as plt

    buffer = pyio.StringIO()
    figure.savefig(
        buffer,
        format="svg",
        bbox_inches="tight",
        metadata={"Creator": None, "Date": None, "Format": None, "Type": None},
    )
    plt.close(figure)
    markup = buffer.getvalue()
    return markup[markup.index("<svg") :]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none"})
    return plt


def _colors(labels: list[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def label_chart(stats: ReportStats) -> str:
    plt = _pyplot()
    labels = stats.labels()
    colors = _colors(labels)
    counts = [stats.label_counts[label] for label in labels]
    figure, axis = plt.subplots(figsize=(7, 0.5 + 0.45 * max(len(labels), 2)))
    bars = axis.barh(labels[::-1], counts[::-1], color=[colors[label] for label in labels[::-1]])
    total = max(stats.scored, 1)
    for bar, count in zip(bars, counts[::-1], strict=True):
        axis.annotate(
            f" {count:,} ({count / total:.1%})",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=9,
        )
    axis.set_xlim(0, max(counts, default=1) * 1.3)
    axis.set_xlabel("rows")
    return _svg(figure)


def histogram_chart(stats: ReportStats) -> str:
    plt = _pyplot()
    labels = stats.labels()
    colors = _colors(labels)
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    figure, axes = plt.subplots(1, len(labels), figsize=(3.4 * len(labels), 2.6), squeeze=False, sharey=False)
    for axis, label in zip(axes[0], labels, strict=True):
        axis.bar(
            edges[:-1],
            stats.histograms.get(label, np.zeros(HISTOGRAM_BINS)),
            width=edges[1] - edges[0],
            align="edge",
            color=colors[label],
        )
        axis.axvline(stats.options.low_confidence, color="#5c5c5c", linestyle="--", linewidth=1)
        axis.set_title(label, fontsize=10)
        axis.set_xlim(0, 1)
        axis.set_xlabel("score")
    axes[0][0].set_ylabel("rows")
    return _svg(figure)


def group_chart(stats: ReportStats) -> str:
    plt = _pyplot()
    labels = stats.labels()
    colors = _colors(labels)
    groups = top_groups(stats)[::-1]
    figure, axis = plt.subplots(figsize=(8, 0.6 + 0.38 * len(groups)))
    left = np.zeros(len(groups))
    names = [f"{name} ({sum(c.values()):,})" for name, c in groups]
    for label in labels:
        shares = np.array([c[label] / max(sum(c.values()), 1) for _, c in groups])
        axis.barh(names, shares, left=left, color=colors[label], label=label)
        left += shares
    axis.set_xlim(0, 1)
    axis.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:.0%}"))
    axis.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(labels), 6), frameon=False)
    return _svg(figure)


def confusion_chart(stats: ReportStats, gold_axis: list[str], predicted_axis: list[str]) -> str:
    plt = _pyplot()
    matrix = np.array([[stats.confusion[(g, p)] for p in predicted_axis] for g in gold_axis])
    figure, axis = plt.subplots(figsize=(1.6 + 1.1 * len(predicted_axis), 1.2 + 0.8 * len(gold_axis)))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(predicted_axis)), predicted_axis)
    axis.set_yticks(range(len(gold_axis)), gold_axis)
    axis.set_xlabel("predicted")
    axis.set_ylabel("gold")
    peak = matrix.max() if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        axis.text(j, i, f"{count:,}", ha="center", va="center", color="white" if count > peak / 2 else "#1d2330")
    return _svg(figure)


def _table(
    header: list[str], rows: list[list[str]], numeric: Set[int] = frozenset(), text: Set[int] = frozenset()
) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if i in numeric else "text" if i in text else ""}">{escape(cell)}</td>'
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _gold_section(stats: ReportStats, title=lambda text: text) -> str:
    """Accuracy, per-label metrics and the confusion chart against the --gold column."""
    accuracy, rows, gold_axis, predicted_axis = metrics(stats)
    table = _table(
        ["label", "precision", "recall", "F1", "support"],
        [[m.label, f"{m.precision:.3f}", f"{m.recall:.3f}", f"{m.f1:.3f}", f"{m.support:,}"] for m in rows],
        numeric={1, 2, 3, 4},
    )
    return (
        f'<section id="gold"><h2>{title("Against the gold labels in " + escape(stats.options.gold or ""))}</h2>'
        f"<p>Accuracy <b>{accuracy:.3f}</b> on {sum(stats.confusion.values()):,} rows with both labels.</p>"
        f'{table}<div class="chart">{confusion_chart(stats, gold_axis, predicted_axis)}</div></section>'
    )


def render(stats: ReportStats) -> str:
    """The report page of one model's predictions."""
    return render_models(ModelsReport([stats], []))


def render_models(report: ModelsReport) -> str:
    """The report page: the row counts, each model's sections (headed by its name when there are several),
    and how often models with the same label set agree."""
    first = report.models[0]
    several = len(report.models) > 1
    cards = [("rows", first.rows), ("scored", first.scored), ("empty", first.empty)]
    if first.truncated is not None:
        cards.append(("truncated", first.truncated))
    if not several:
        cards.append((f"score < {first.options.low_confidence:g}", first.low_confidence))
    parts = [
        f"<h1>Scoring report: {escape(base_name(first.source))}</h1>",
        f'<div class="meta">{escape(str(first.source))} · generated '
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by batchsent"
        + (f" · {len(report.models)} models: {escape(', '.join(_name(s) for s in report.models))}" if several else "")
        + "</div>",
        '<div class="cards">'
        + "".join(f"<div class=card><b>{v:,}</b><span>{escape(k)}</span></div>" for k, v in cards)
        + "</div>",
    ]
    if report.agreements:
        parts.append(_agreement_section(report.agreements))
    for stats in report.models:
        parts += _model_sections(stats, _name(stats) if several else "")
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>batchsent report: {escape(base_name(first.source))}</title>"
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def _name(stats: ReportStats) -> str:
    return stats.options.prefix.removesuffix("_")


def _agreement_section(agreements: list[Agreement]) -> str:
    """A row per pair of models with the same labels: rows both scored and the share given the same label,
    then each pair's cross-table."""
    rows = [
        [
            a.first.removesuffix("_"),
            a.second.removesuffix("_"),
            f"{a.rows:,}",
            f"{a.agreed:,}",
            f"{a.agreed / a.rows:.1%}" if a.rows else "-",
        ]
        for a in agreements
    ]
    parts = [_table(["model", "model", "rows both scored", "same label", "agreement"], rows, numeric={2, 3, 4})]
    for agreement in agreements:
        labels = sorted({a for a, _ in agreement.pairs} | {b for _, b in agreement.pairs})
        first, second = agreement.first.removesuffix("_"), agreement.second.removesuffix("_")
        parts.append(
            f"<h3>{escape(first)} (rows) against {escape(second)} (columns)</h3>"
            + _table(
                ["", *labels],
                [[label] + [f"{agreement.pairs[(label, other)]:,}" for other in labels] for label in labels],
                numeric=set(range(1, len(labels) + 1)),
            )
        )
    return '<section id="agreement"><h2>Agreement between models</h2>' + "".join(parts) + "</section>"


def _model_sections(stats: ReportStats, name: str) -> list[str]:
    """One model's sections: labels, scores, groups, gold metrics and examples (titles prefixed with ``name``)."""
    options, parts = stats.options, []
    title = (lambda text: f"{escape(name)}: {text}") if name else (lambda text: text)
    suffix = f"-{escape(name)}" if name else ""
    if name:
        cards = [("scored", stats.scored), (f"score < {options.low_confidence:g}", stats.low_confidence)]
        parts.append(
            f"<h2>Model {escape(name)}</h2>"
            + '<div class="cards">'
            + "".join(f"<div class=card><b>{v:,}</b><span>{escape(k)}</span></div>" for k, v in cards)
            + "</div>"
        )
    if stats.scored:
        parts.append(
            f'<section id="labels{suffix}"><h2>{title("Labels")}</h2><div class="chart">{label_chart(stats)}'
            "</div></section>"
        )
        parts.append(
            f'<section id="scores{suffix}"><h2>{title("Scores by label")}</h2><div class="chart">{histogram_chart(stats)}'
            f'</div><p class="meta">Dashed line: the low-confidence threshold ({options.low_confidence:g}).</p></section>'
        )
    if options.by and stats.groups:
        parts.append(
            f'<section id="groups{suffix}"><h2>{title("Labels by " + escape(options.by))}</h2>'
            f'<div class="chart">{group_chart(stats)}</div></section>'
        )
    if options.gold and stats.confusion:
        parts.append(_gold_section(stats, title))
    if options.examples:
        least = sorted(stats.least_confident, reverse=True)
        parts.append(
            f'<section id="low-confidence{suffix}"><h2>{title("Least confident rows")} ({stats.low_confidence:,} below '
            f"{options.low_confidence:g})</h2>"
            + _table(
                ["row", "label", "score", "text"],
                [[f"{r:,}", lab, f"{-s:.3f}", t] for s, r, lab, t in least],
                numeric={0, 2},
                text={3},
            )
            + "</section>"
        )
        for label in stats.labels():
            best = sorted(stats.most_confident.get(label, []), reverse=True)
            parts.append(
                f'<section class="examples"><h2>{title("Most confident " + escape(label))}</h2>'
                + _table(
                    ["row", "score", "text"], [[f"{-r:,}", f"{s:.3f}", t] for s, r, t in best], numeric={0, 1}, text={2}
                )
                + "</section>"
            )
    return parts


def write_report(path: Path, html: str) -> None:
    """Write the page atomically."""
    with atomic_file(path) as temporary:
        temporary.write_text(html, encoding="utf-8")


def build_report(scored: Path | str, target: Path, options: ReportOptions, truncated: int | None = None) -> None:
    """Read ``scored`` (a file or a folder of parts), render the report and write it to ``target``.

    Raises the reading's BatchsentError, or OutputError when ``target`` cannot be written.
    """
    html = render_models(collect_models(scored, options, truncated))
    try:
        write_report(target, html)
    except OSError as error:
        raise OutputError(f"{target}: cannot write the report: {error}") from error
