"""The report's HTML: the overview, the summary and business-metric tables, and the figures' captions around the
PNGs `pomona.demo.report` draws. The markup is `templates/report.html.j2`; this module works out the text it shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jinja2

from pomona.demo.run import HOLDOUT_FIGURES

if TYPE_CHECKING:
    from pomona.demo.report import Panel, ReportInputs

REPORT_DIR = "report"  # the PNGs, beside report.html
MAX_REJECTION_ROWS = 20
MAX_RECALL_ROWS = 30  # the labels recalled worst; the rest are summarised
_SHOWN_ELSEWHERE = frozenset({"weights_note", "holdout"})  # the banner and the business metric
# The summary's figures (`demo.run.HOLDOUT_FIGURES`), and how many held-out images had no label to answer with.
_HOLDOUT_FIGURES = (*HOLDOUT_FIGURES, "not_offered")

# Autoescape: every piece of text from the summary or the bucket (labels, keys, notes) is shown, never run.
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("pomona.demo", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class _SummaryRow:
    name: str
    shown: str
    numeric: bool


@dataclass(frozen=True)
class _Metric:
    """The business-metric section: the classifier's evaluation on the holdout, or why there is none."""

    explanation: str
    skipped: str | None = None
    rows: dict[str, str] = field(default_factory=dict)
    recall: list[tuple[str, str]] = field(default_factory=list)  # the worst-recalled labels, worst first
    recall_in_full: int = 0  # every label recalled in full: how many labels
    recall_rest: int = 0  # labels left out of `recall`
    recall_rest_floor: str = ""  # the lowest recall among them


def render_html(summary: Mapping[str, Any], outputs: ReportInputs, panels: Sequence[Panel]) -> str:
    """The report page."""
    return _TEMPLATES.get_template("report.html.j2").render(
        weights_note=summary.get("weights_note"),
        overview=_overview(outputs),
        missing_files=outputs.missing_files,
        summary_rows=_summary_rows(summary),
        metric=_metric(summary, outputs.quality),
        panels=panels,
        report_dir=REPORT_DIR,
        rejections=outputs.rejections,
        max_rejection_rows=MAX_REJECTION_ROWS,
    )


def _overview(outputs: ReportInputs) -> str | None:
    """One line on what is committed; None when nothing is."""
    if not outputs.batch_ids:
        return None
    text = f"{len(outputs.labels):,} images in {len(outputs.batch_ids)} committed batch(es)"
    if outputs.model is not None:
        model = outputs.model
        text += (
            f"; PCA version {outputs.pca_version} keeps k = {model.n_components} component(s), explaining "
            f"{model.explained_variance_ratio.sum():.1%} of the variance of {model.n_seen:,} images"
        )
    return text


def _summary_rows(summary: Mapping[str, Any]) -> list[_SummaryRow]:
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
        rows.append(_SummaryRow(name.replace("_", " "), shown, numeric))
    return rows


def _metric(summary: Mapping[str, Any], quality: Mapping[str, Any] | None) -> _Metric:
    """The classifier's evaluation on the holdout: LATEST's quality.json, else the summary's figures."""
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
        return _Metric(explanation, skipped=str(why or "no committed evaluation"))
    rows = {
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
        rows["never-taught labels' photos answered (leave-labels-out)"] = format_percent(never_taught)
    if figures["not_offered"]:
        rows["held-out images of labels not offered"] = format_value(figures["not_offered"])
    recall: Mapping[str, float] = quality.get("per_label_recall") or {}
    if recall and min(recall.values()) == 1.0:
        return _Metric(explanation, rows=rows, recall_in_full=len(recall))
    # Per-label recall on the holdout, worst first: which fruits the classifier gets wrong.
    ranked = sorted(recall.items(), key=lambda item: (item[1], item[0]))
    rest = ranked[MAX_RECALL_ROWS:]
    return _Metric(
        explanation,
        rows=rows,
        recall=[(label, format_percent(value)) for label, value in ranked[:MAX_RECALL_ROWS]],
        recall_rest=len(rest),
        recall_rest_floor=format_percent(rest[0][1]) if rest else "",
    )


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
