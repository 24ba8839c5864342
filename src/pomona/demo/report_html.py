"""The report's HTML: the overview, the summary and business-metric tables, and the figures' captions around the
PNGs `pomona.demo.report` draws."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pomona.demo.run import HOLDOUT_FIGURES

if TYPE_CHECKING:
    from pomona.demo.report import Panel, ReportInputs

REPORT_DIR = "report"  # the PNGs, beside report.html
MAX_REJECTION_ROWS = 20
MAX_RECALL_ROWS = 30  # the labels recalled worst; the rest are summarised
_SHOWN_ELSEWHERE = frozenset({"weights_note", "holdout"})  # the banner and the business metric

_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; color: #222; max-width: 980px; margin: 2em auto; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
.banner { background: #fff4d6; border: 2px solid #e0a800; border-radius: 6px; padding: 0.8em 1em;
  font-weight: 600; }
.warning { background: #fde8e8; border-left: 4px solid #d62728; padding: 0.6em 1em; }
.muted { color: #666; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { text-align: left; padding: 0.25em 1em 0.25em 0; border-bottom: 1px solid #eee; vertical-align: top; }
td.num { font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.93em; margin-top: 0.3em; }
code { font-size: 0.9em; }
"""


def render_html(summary: Mapping[str, Any], outputs: ReportInputs, panels: Sequence[Panel]) -> str:
    """The report page; every piece of text from the summary or the bucket goes through `html.escape`."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Pomona demo report</title><style>{_CSS}</style></head><body>",
        "<h1>Pomona demo report</h1>",
    ]
    if summary.get("weights_note"):
        parts.append(f'<p class="banner">⚠ {e(str(summary["weights_note"]))}</p>')
    parts.append(_overview(outputs))
    if outputs.missing_files:
        listed = ", ".join(f"<code>{e(k)}</code>" for k in outputs.missing_files[:5])
        parts.append(
            f'<p class="warning">{len(outputs.missing_files)} part file(s) named by committed manifests are '
            f"missing from this folder and were left out: {listed}</p>"
        )
    parts += ["<h2>Summary</h2>", _summary_table(summary)]
    parts += ["<h2>Business metric</h2>", _metric_section(summary, outputs.quality)]
    parts.append("<h2>Figures</h2>")
    for panel in panels:
        if panel.figure is None:
            parts.append(f'<h3>{e(panel.title)}</h3><p class="muted">{e(panel.caption)}</p>')
        else:
            parts.append(
                f'<figure><img src="{REPORT_DIR}/{e(panel.name)}.png" alt="{e(panel.title)}">'
                f"<figcaption><strong>{e(panel.title)}.</strong> {e(panel.caption)}</figcaption></figure>"
            )
    if outputs.rejections:
        parts += ["<h2>Rejected images</h2>", _rejections_table(outputs.rejections)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _overview(outputs: ReportInputs) -> str:
    if not outputs.batch_ids:
        return (
            '<p class="warning">No committed batches yet: nothing has been featurized, so there are no '
            "features, projections or classifier to show.</p>"
        )
    text = f"{len(outputs.labels):,} images in {len(outputs.batch_ids)} committed batch(es)"
    if outputs.model is not None:
        model = outputs.model
        text += (
            f"; PCA version {outputs.pca_version} keeps k = {model.n_components} component(s), explaining "
            f"{model.explained_variance_ratio.sum():.1%} of the variance of {model.n_seen:,} images"
        )
    return f"<p>{html.escape(text)}.</p>"


def _summary_table(summary: Mapping[str, Any]) -> str:
    rows = []
    for name, value in summary.items():
        if name in _SHOWN_ELSEWHERE:
            continue
        if isinstance(value, list) and all(_is_scalar(v) for v in value):
            shown = ", ".join(format_value(v) for v in value) or "none"
        elif _is_scalar(value):
            shown = format_value(value)
        else:
            continue  # mappings are drawn as figures
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        cell = '<td class="num">' if numeric else "<td>"
        rows.append(f"<tr><th>{html.escape(name.replace('_', ' '))}</th>{cell}{html.escape(shown)}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def _metric_section(summary: Mapping[str, Any], quality: Mapping[str, Any] | None) -> str:
    """The classifier's evaluation on the holdout: LATEST's quality.json, else the summary's figures."""
    e = html.escape
    quality = quality or {}
    holdout = summary.get("holdout") or {}
    figures = {name: quality.get(name, holdout.get(name)) for name in _HOLDOUT_FIGURES}
    gain, loss = quality.get("gain", summary.get("gain")), quality.get("loss", summary.get("loss"))
    gain_text = f"earns {format_value(gain)}" if gain is not None else "earns a gain"
    loss_text = f"costs {format_value(loss)}" if loss is not None else "costs a loss"
    explanation = (
        "After each batch the classifier (a linear discriminant on the PCA projections, retrained from every "
        "training image) is scored on the held-out images: a fixed tenth of all images, chosen by their sha256 "
        "alone, that it is never trained on. It answers only where its confidence reaches the threshold: each "
        f"right identification {gain_text}, each wrong one {loss_text}, and a withheld answer costs nothing. "
        "The threshold is the one that earns most on the holdout, never below the break-even confidence; the "
        "net revenue per 1000 images is the total over all held-out images at that threshold, scaled to 1000."
    )
    why = quality.get("skipped") or holdout.get("skipped")
    if why or all(v is None for v in figures.values()):
        why = why or "no committed evaluation"
        return f'<p>No holdout evaluation: {e(str(why))}.</p><p class="muted">{e(explanation)}</p>'
    shown = {
        "held-out images": format_value(figures["n"]),
        "accuracy (every held-out image answered)": format_percent(figures["accuracy"]),
        "macro F1": format_value(figures["macro_f1"], ".3f"),
        "threshold": format_value(figures["best_threshold"], ".4g"),
        "answered at the threshold": format_percent(figures["answered_fraction"]),
        "accuracy of those answered": format_percent(figures["answered_accuracy"]),
        "net revenue per 1000 images": format_value(figures["net_revenue_per_1000"], ",.1f"),
        "temperature": format_value(figures["temperature"], ".3g"),
        "familiar distance (farther: not something it knows)": format_value(
            figures["familiar_distance"], ".4g"
        ),
        "held-out known photos refused as unfamiliar": format_percent(figures["unfamiliar_fraction"]),
    }
    never_taught = (quality.get("leave_labels_out") or {}).get("never_taught_answered")
    if never_taught is not None:
        shown["never-taught labels' photos answered (leave-labels-out)"] = format_percent(never_taught)
    if figures["not_offered"]:
        shown["held-out images of labels not offered"] = format_value(figures["not_offered"])
    rows = "".join(
        f'<tr><th>{e(name)}</th><td class="num">{e(value)}</td></tr>' for name, value in shown.items()
    )
    return f"<table>{rows}</table><p>{e(explanation)}</p>{_recall_table(quality.get('per_label_recall'))}"


# The summary's figures (`demo.run.HOLDOUT_FIGURES`), and how many held-out images had no label to answer with.
_HOLDOUT_FIGURES = (*HOLDOUT_FIGURES, "not_offered")


def _recall_table(recall: Mapping[str, float] | None) -> str:
    """Per-label recall on the holdout, worst first: which fruits the classifier gets wrong."""
    if not recall:
        return ""
    if min(recall.values()) == 1.0:
        return f"<p>Every one of the {len(recall)} label(s) is recalled in full on the holdout.</p>"
    ranked = sorted(recall.items(), key=lambda item: (item[1], item[0]))
    rows = "".join(
        f'<tr><td>{html.escape(label)}</td><td class="num">{html.escape(format_percent(value))}</td></tr>'
        for label, value in ranked[:MAX_RECALL_ROWS]
    )
    rest = ranked[MAX_RECALL_ROWS:]
    tail = (
        f'<p class="muted">… and {len(rest)} more label(s), recalled at {format_percent(rest[0][1])} or better.</p>'
        if rest
        else ""
    )
    return (
        "<h3>Recall per label</h3><p>The share of each label's held-out images whose most probable label is "
        "the right one, worst first.</p>"
        f"<table><tr><th>label</th><th>recall</th></tr>{rows}</table>{tail}"
    )


def _rejections_table(rejections: Sequence[Mapping[str, Any]]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(str(r['stage']))}</td><td>{e(str(r['reason']))}</td>"
        f"<td><code>{e(str(r.get('original_key', '?')))}</code></td><td>{e(str(r.get('detail', '')))}</td></tr>"
        for r in rejections[:MAX_REJECTION_ROWS]
    )
    more = len(rejections) - MAX_REJECTION_ROWS
    tail = f'<p class="muted">… and {more} more under <code>quarantine/</code>.</p>' if more > 0 else ""
    return f"<table><tr><th>stage</th><th>reason</th><th>key</th><th>detail</th></tr>{rows}</table>{tail}"


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def format_value(value: object, spec: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool | str):
        return str(value)
    if spec:
        return format(value, spec)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_percent(value: object) -> str:
    return format_value(value) if value is None else format_value(value, ".1%")
