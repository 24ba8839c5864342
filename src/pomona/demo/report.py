"""The human-facing report of `pomona demo`: PNG plots and one self-contained `report.html`.

It reads a local folder laid out as the bucket's outputs (`features/`, `models/pca/`, `batches/`,
`quarantine/`) and, like every reader, trusts only what the featurization job committed: the part files a
batch manifest names and the PCA version `models/pca/LATEST` points at, whose `quality.json` is its
classifier's evaluation on the held-out images. Figures are drawn on bare `matplotlib.figure.Figure` objects,
which render through Agg without touching pyplot's global state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter, StrMethodFormatter

from pomona.core.outputs import EVALUATION_FILE, CommittedOutputs, FolderFiles
from pomona.demo.report_html import REPORT_DIR, format_value, render_html
from pomona.ml.pca import PcaModel, PcaState, fit_pca, load_model, load_state
from pomona.ops.export import features_matrix

MAX_SCATTER_POINTS = 20_000  # beyond this a scatter is a blot; a fixed-seed sample shows the same shape
MAX_CONFUSION_LABELS = 60  # beyond this the matrix's cells are below a pixel; per-label recall says it better
_DPI = 110
_STAGE_COLOURS = {"ingest": "#d62728", "featurize": "#ff7f0e"}
_MARKERS = "osD^v<>Ph*"


@dataclass(frozen=True, eq=False)
class ReportInputs:
    """What an outputs folder holds that a reader may trust, plus the quarantine sidecars."""

    batch_ids: list[str]
    labels: list[str]  # one per committed image, in the row order of `features`
    features: npt.NDArray[np.float32]  # n×d
    missing_files: list[str]  # part files a manifest names that the folder lacks
    pca_version: int | None
    model: PcaModel | None
    state: PcaState | None
    quality: dict[str, Any] | None  # LATEST's quality.json: its classifier on the holdout, or why not
    rejections: list[dict[str, Any]]  # sidecars; "stage" is "ingest" unless the job said "featurize"


@dataclass(frozen=True, eq=False)
class Panel:
    name: str
    title: str
    caption: str
    figure: Figure | None  # None: nothing to draw, and the caption says why


# -- reading -----------------------------------------------------------------------------------------------------


def read_outputs(out: Path) -> ReportInputs:
    """The committed batches' features, the LATEST PCA version and the quarantine sidecars under `out`."""
    outputs = CommittedOutputs(FolderFiles(out))
    manifests = outputs.manifests()
    table, missing = outputs.read_parts("features", ["label", "features"], manifests)
    labels: list[str] = [] if table is None else table.column("label").to_pylist()
    features = (
        np.empty((0, 0), dtype=np.float32) if table is None else features_matrix(table.column("features"))
    )
    version, model, state, quality = None, None, None, None
    if latest := outputs.latest_version():
        version = latest
        model_npz = outputs.version_file(version, "model.npz")
        state_npz = outputs.version_file(version, "state.npz")
        model = None if model_npz is None else load_model(model_npz)
        state = None if state_npz is None else load_state(state_npz)
        quality = outputs.version_json(version, EVALUATION_FILE)
    return ReportInputs(
        batch_ids=[str(manifest["batch_id"]) for manifest in manifests],
        labels=labels,
        features=features,
        missing_files=missing,
        pca_version=version,
        model=model,
        state=state,
        quality=quality,
        rejections=outputs.sidecars(),
    )


# -- the report --------------------------------------------------------------------------------------------------


def write_report(out: Path, summary: Mapping[str, Any]) -> Path:
    """Draw the plots into `out/report/`, write `out/report.html` beside them and return its path."""
    outputs = read_outputs(out)
    panels = [
        _variance_panel(outputs, summary.get("variance_target")),
        _scatter_panel(outputs),
        _labels_panel(outputs),
        _rejections_panel(outputs, summary),
        _throughput_panel(summary.get("throughput") or {}),
        _revenue_panel(outputs.quality),
        _confusion_panel(outputs.quality),
    ]
    (out / REPORT_DIR).mkdir(parents=True, exist_ok=True)
    for panel in panels:
        if panel.figure is not None:
            panel.figure.savefig(out / REPORT_DIR / f"{panel.name}.png", dpi=_DPI, bbox_inches="tight")
    page = out / "report.html"
    page.write_text(render_html(summary, outputs, panels), encoding="utf-8")
    return page


# -- plots -------------------------------------------------------------------------------------------------------


def _variance_panel(outputs: ReportInputs, target: float | None) -> Panel:
    title = "Explained variance"
    model, state = outputs.model, outputs.state
    if model is None:
        return Panel("variance", title, "No PCA version is committed yet.", None)
    k = model.n_components
    # The stored merge state holds the whole spectrum, so the curve goes on past the k components kept.
    if state is not None and state.n >= 2:
        ratios = fit_pca(state, n_components=state.d).explained_variance_ratio
    else:
        ratios = model.explained_variance_ratio
    cumulative = np.cumsum(ratios)
    figure, ax = _figure(8, 4.5)
    components = np.arange(1, ratios.size + 1)
    ax.plot(components, cumulative, marker="." if ratios.size < 50 else None, lw=2, label="cumulative")
    ax.axvline(k, color="#d62728", ls="--", lw=1, label=f"chosen k = {k}")
    ax.plot([k], [cumulative[k - 1]], "o", color="#d62728")
    ax.annotate(
        f"{cumulative[k - 1]:.1%}", (k, cumulative[k - 1]), xytext=(6, -14), textcoords="offset points"
    )
    if target is not None:
        ax.axhline(target, color="grey", ls=":", lw=1, label=f"variance target {target:.0%}")
    ax.set(xlabel="number of components", ylabel="share of variance explained", ylim=(0, 1.03))
    if ratios.size > 50:
        # A long spectrum on a linear axis squeezes the first components, where k sits, into a sliver.
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.set_xlabel("number of components (log scale)")
    else:
        ax.set_xlim(0.5, components[-1] + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title(f"PCA version {outputs.pca_version}, fitted on {model.n_seen:,} images")
    ax.legend(loc="lower right")
    caption = (
        f"Cumulative share of the feature variance explained by the first components of PCA version "
        f"{outputs.pca_version}; the version keeps k = {k}, which explain {cumulative[k - 1]:.1%}."
    )
    return Panel("variance", title, caption, figure)


def _scatter_panel(outputs: ReportInputs) -> Panel:
    title = "Images in PCA space"
    model, x = outputs.model, outputs.features
    if model is None or not len(x):
        return Panel("pca_scatter", title, "No committed images or PCA version to project.", None)
    if x.shape[1] != model.mean.size:
        note = f"The features have {x.shape[1]} dimensions, the LATEST PCA expects {model.mean.size}."
        return Panel("pca_scatter", title, note, None)
    labels = np.asarray(outputs.labels, dtype=str)
    sampled = ""
    if len(x) > MAX_SCATTER_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(len(x), MAX_SCATTER_POINTS, replace=False))
        x, labels = x[keep], labels[keep]
        sampled = f" A random {MAX_SCATTER_POINTS:,} of the {len(outputs.labels):,} images are drawn."
    axes = model.components[:2]
    coords = (x.astype(np.float64) - model.mean) @ axes.T
    classes = sorted(set(labels.tolist()))
    ratio = model.explained_variance_ratio

    if axes.shape[0] == 1:
        # One component: give each label its own row, jittered, rather than pile every point on a line.
        figure, ax = _figure(8, max(2.5, 0.35 * len(classes) + 1.2))
        rows = np.searchsorted(classes, labels) + np.random.default_rng(0).uniform(-0.25, 0.25, len(labels))
        for i, label in enumerate(classes):
            mask = labels == label
            ax.scatter(coords[mask, 0], rows[mask], s=10, alpha=0.7, **_style(i))
        ax.set_yticks(range(len(classes)), [_plain(c) for c in classes])
        ax.set_ylim(len(classes) - 0.5, -0.5)
        ax.set_xlabel(f"PC1 ({ratio[0]:.1%} of variance)")
        shape = "The PCA keeps a single component (k = 1), so each label gets its own row."
    else:
        figure, ax = _figure(8, 6)
        for i, label in enumerate(classes):
            mask = labels == label
            ax.scatter(coords[mask, 0], coords[mask, 1], s=12, alpha=0.75, label=_plain(label), **_style(i))
        ax.set(xlabel=f"PC1 ({ratio[0]:.1%} of variance)", ylabel=f"PC2 ({ratio[1]:.1%} of variance)")
        if len(classes) > 6:
            ax.legend(
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                ncols=1 + len(classes) // 25,
                fontsize="small",
                markerscale=1.5,
                frameon=False,
            )
        else:
            ax.legend(fontsize="small", markerscale=1.5)
        shape = "Colours are labels."
    ax.set_title(f"{len(outputs.labels):,} committed images on PCA version {outputs.pca_version}")
    caption = (
        f"Every committed image's features projected on the first axes of the LATEST PCA (version "
        f"{outputs.pca_version}). {shape}{sampled}"
    )
    return Panel("pca_scatter", title, caption, figure)


def _labels_panel(outputs: ReportInputs) -> Panel:
    title = "Images per label"
    if not outputs.labels:
        return Panel("labels", title, "No committed images yet.", None)
    counts = sorted(Counter(outputs.labels).items(), key=lambda item: (-item[1], item[0]))
    figure, ax = _figure(8, max(2.0, 0.25 * len(counts) + 1.0))
    bars = ax.barh([_plain(label) for label, _ in counts], [n for _, n in counts], color="#1f77b4")
    ax.bar_label(bars, padding=3, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("committed images")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.08)
    caption = f"{len(outputs.labels):,} committed images over {len(counts)} label(s)."
    return Panel("labels", title, caption, figure)


def _rejections_panel(outputs: ReportInputs, summary: Mapping[str, Any]) -> Panel:
    title = "Rejections by reason"
    if outputs.rejections:
        counts = Counter((r["reason"], r["stage"]) for r in outputs.rejections)
        source = f"the {len(outputs.rejections)} quarantine sidecar(s)"
    else:
        # A mirror without quarantine/: the run's own counts are all there is.
        counts = Counter(
            {(reason, "ingest"): n for reason, n in (summary.get("quarantined") or {}).items()}
            | {(reason, "featurize"): n for reason, n in (summary.get("failed") or {}).items()}
        )
        source = "the run summary"
    counts = Counter({key: n for key, n in counts.items() if n > 0})
    if not counts:
        figure, ax = _figure(6, 1.6)
        ax.text(0.5, 0.5, "none: no upload was rejected", ha="center", va="center", fontsize="large")
        ax.set_axis_off()
        return Panel("rejections", title, "No upload was quarantined or failed featurization.", figure)

    reasons = sorted(
        {reason for reason, _ in counts}, key=lambda r: (-sum(counts[r, s] for s in _STAGE_COLOURS), r)
    )
    figure, ax = _figure(8, max(2.0, 0.35 * len(reasons) + 1.2))
    left = np.zeros(len(reasons))
    for stage, colour in _STAGE_COLOURS.items():
        widths = np.array([counts[reason, stage] for reason in reasons], dtype=float)
        if widths.any():
            bars = ax.barh([_plain(r) for r in reasons], widths, left=left, color=colour, label=stage)
            ax.bar_label(bars, labels=[f"{w:.0f}" if w else "" for w in widths], label_type="center")
            left += widths
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, left.max() * 1.05)
    ax.legend(title="stage", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    caption = (
        f"{sum(counts.values())} image(s) quarantined at ingestion or failed at featurization, from {source}."
    )
    return Panel("rejections", title, caption, figure)


def _throughput_panel(throughput: Mapping[str, Any]) -> Panel:
    title = "Throughput per stage"
    rates = {stage: float(v) for stage, v in throughput.items() if isinstance(v, int | float)}
    if not rates:
        return Panel("throughput", title, "No throughput was measured.", None)
    figure, ax = _figure(7, 4)
    bars = ax.bar([_plain(s) for s in rates], list(rates.values()), color="#2ca02c")
    ax.bar_label(bars, labels=[f"{v:,.1f}" for v in rates.values()], padding=3)
    ax.set_ylabel("images per second")
    ax.margins(y=0.12)
    caption = "Images per second through each stage of this demo run, on this machine."
    return Panel("throughput", title, caption, figure)


def _revenue_panel(quality: Mapping[str, Any] | None) -> Panel:
    title = "Net revenue by confidence threshold, on the holdout"
    curve = (quality or {}).get("curve") or {}
    thresholds = np.asarray(curve.get("threshold", []), dtype=float)
    if quality is None or not thresholds.size:
        why = (quality or {}).get("skipped") or "no revenue curve was computed"
        return Panel("revenue", title, f"No curve: {why}.", None)
    revenue = np.asarray(curve["net_revenue_per_1000"], dtype=float)
    coverage = np.asarray(curve["coverage"], dtype=float)
    figure, ax = _figure(8, 4.5)
    (line,) = ax.plot(thresholds, revenue, lw=2, color="#1f77b4", label="net revenue per 1000 images")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="confidence threshold", ylabel="net revenue per 1000 images", xlim=(-0.02, 1.02))
    twin = ax.twinx()
    (cover,) = twin.plot(thresholds, coverage, ls="--", color="#ff7f0e", label="coverage (answered)")
    twin.set(ylabel="coverage", ylim=(0, 1.03))
    twin.yaxis.set_major_formatter(PercentFormatter(1.0))
    handles = [line, cover]
    floor = quality.get("min_threshold")
    best, best_revenue = quality.get("best_threshold"), quality.get("net_revenue_per_1000")
    if floor and floor != best:
        handles.append(ax.axvline(floor, color="grey", ls=":", lw=1, label=f"break-even {floor:.3f}"))
    if best is not None and best_revenue is not None:
        marker = ax.axvline(best, color="#d62728", ls=":", lw=1.2, label=f"threshold {best:.4g}")
        ax.plot([best], [best_revenue], "o", color="#d62728")
        handles.append(marker)
    ax.legend(handles=handles, loc="lower left", fontsize="small")
    ax.set_title(f"The classifier on {format_value(quality.get('n'))} held-out images")
    caption = (
        f"What the classifier's answers on the held-out images earn when only those at or above a confidence "
        f"threshold are given (gain {format_value(quality.get('gain'))} per right answer, loss "
        f"{format_value(quality.get('loss'))} per wrong one); the dashed line is the share answered. The red line is "
        "the threshold the classifier was committed with: the one earning most, never below the break-even "
        "confidence."
    )
    return Panel("revenue", title, caption, figure)


def _confusion_panel(quality: Mapping[str, Any] | None) -> Panel:
    title = "Confusion on the holdout"
    confusion = (quality or {}).get("confusion") or {}
    labels = [str(label) for label in confusion.get("labels", [])]
    if not labels:
        why = (quality or {}).get("skipped") or "no confusion matrix was computed"
        return Panel("confusion", title, f"No confusion matrix: {why}.", None)
    if len(labels) > MAX_CONFUSION_LABELS:
        note = (
            f"{len(labels)} labels are too many to draw; per-label recall is listed with the business metric."
        )
        return Panel("confusion", title, note, None)
    counts = np.asarray(confusion["matrix"], dtype=float)
    support = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)
    size = max(4.0, 0.32 * len(labels) + 2.5)
    figure, ax = _figure(size + 1.2, size)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [_plain(label) for label in labels]
    ax.set_xticks(range(len(labels)), names, rotation=90, fontsize="small")
    ax.set_yticks(range(len(labels)), names, fontsize="small")
    ax.set(xlabel="the classifier's top answer", ylabel="true label")
    if len(labels) <= 20:
        for (i, j), n in np.ndenumerate(counts):
            if n:
                colour = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, f"{n:.0f}", ha="center", va="center", fontsize="x-small", color=colour)
    figure.colorbar(image, ax=ax, shrink=0.8, format=PercentFormatter(1.0), label="share of the true label")
    caption = (
        f"Each held-out image ({int(counts.sum()):,}) by true label (rows) and the classifier's most probable "
        "label (columns), whatever its confidence; shaded by the share of its row, counts in the cells."
    )
    return Panel("confusion", title, caption, figure)


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _style(i: int) -> dict[str, Any]:
    """Twenty colours, then the same colours with another marker: every label stays distinguishable."""
    return {"color": colormaps["tab20"](i % 20), "marker": _MARKERS[(i // 20) % len(_MARKERS)]}


def _plain(text: str) -> str:
    """Text matplotlib shows as is: a `$` would otherwise start mathtext (and an odd one fails to draw)."""
    return text.replace("$", r"\$")
