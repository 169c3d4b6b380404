"""The report's plots, each a function of the report's content; PNG bytes, drawn with matplotlib (Agg)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from .records import BenchResult, Report

PLOTS = {
    "accuracy_latency": "Top-1 accuracy vs p50 latency",
    "latency_batch": "p50 latency by batch size",
    "latency_distribution": "Latency distribution (every timed call)",
    "training_curves": "Training curves",
    "pareto": "What to ship: the accuracy-latency front",
}


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _label(r: BenchResult) -> str:
    return f"{r.stage} {r.backend} {r.precision} {r.setting.label()}"


def accuracy_latency(plt: Any, report: Report, history: list[dict[str, Any]]) -> Any:
    import matplotlib.ticker

    primary, b = report.primary_backend, report.batch_size
    points = [r for r in report.rows if primary in r.p50_ms]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(points):  # labels staggered: compressed variants often share an accuracy
        ax.scatter(r.p50_ms[primary], r.top1, s=40)
        ax.annotate(
            r.name, (r.p50_ms[primary], r.top1), fontsize=8, xytext=(5, 4 - 11 * (i % 3)), textcoords="offset points"
        )
    ax.set(
        xscale="log",
        xlabel=f"p50 latency, ms ({primary}, batch {b})",
        ylabel="top-1 %",
        title=PLOTS["accuracy_latency"],
    )
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(x=0.25, y=0.15)
    ax.grid(alpha=0.3)
    return fig


def latency_batch(plt: Any, report: Report, history: list[dict[str, Any]]) -> Any:
    if not report.bench:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[str, list[tuple[int, float]]] = {}
    students = {r.stage for r in report.rows if r.role == "student"}
    dashed = {_label(r) for r in report.bench if r.stage not in students}  # the teachers' lines
    for r in report.bench:
        series.setdefault(_label(r), []).append((r.batch_size, r.p50_ms))
    for label, pts in sorted(series.items()):
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="o", label=label, linestyle="--" if label in dashed else "-")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency, ms", title=PLOTS["latency_batch"])
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def latency_distribution(plt: Any, report: Report, history: list[dict[str, Any]]) -> Any:
    b = report.batch_size
    at_b = [r for r in report.bench if r.batch_size == b and r.samples_ms]
    if not at_b:
        return None
    fig, ax = plt.subplots(figsize=(6, max(3, 0.35 * len(at_b) + 1)))
    ax.boxplot(
        [r.samples_ms for r in at_b], orientation="horizontal", showfliers=True, tick_labels=[_label(r) for r in at_b]
    )
    ax.set(xscale="log", xlabel=f"latency per call, ms (batch {b})", title=PLOTS["latency_distribution"])
    ax.tick_params(axis="y", labelsize=7)
    return fig


def training_curves(plt: Any, report: Report, history: list[dict[str, Any]]) -> Any:
    if not history:
        return None
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for stage in dict.fromkeys(h["stage"] for h in history):
        recs = [h for h in history if h["stage"] == stage]
        label = report.titles.get(stage, stage)
        acc.plot([h["epoch"] for h in recs], [h["top1"] for h in recs], marker=".", label=label)
        loss.plot([h["epoch"] for h in recs], [h["train_loss"] for h in recs], marker=".", label=label)
    acc.set(xlabel="epoch", ylabel="val top-1 %", title=PLOTS["training_curves"])
    loss.set(xlabel="epoch", ylabel="train loss", yscale="log")
    acc.legend(fontsize=7)
    acc.grid(alpha=0.3)
    loss.grid(alpha=0.3)
    return fig


def pareto(plt: Any, report: Report, history: list[dict[str, Any]]) -> Any:
    p = report.pareto
    if not p.points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for precision in dict.fromkeys(q.precision for q in p.points):
        pts = [q for q in p.points if q.precision == precision]
        ax.scatter([q.p50_ms for q in pts], [q.top1 for q in pts], s=40, label=precision)
    front = [q for name in p.front for q in p.points if q.name == name]
    ax.step([q.p50_ms for q in front], [q.top1 for q in front], where="post", color="0.3", lw=1, label="front")
    pick = report.recommendation.pick
    if pick is not None:
        ax.scatter([pick.p50_ms], [pick.top1], s=160, facecolors="none", edgecolors="red", label="recommended")
    if p.budget_ms is not None:
        ax.axvline(p.budget_ms, color="red", ls="--", lw=1, label=f"budget {p.budget_ms:g} ms")
    ax.set(
        xscale="log",
        xlabel=f"p50 latency, ms ({p.backend}, batch {p.batch_size})",
        ylabel="top-1 %",
        title=PLOTS["pareto"],
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


# The plot of each PLOTS key: (pyplot, the report as built (its bench results with their samples), history
# records) -> figure, or None when there is nothing to draw.
DRAW: dict[str, Callable[..., Any]] = {
    "accuracy_latency": accuracy_latency,
    "latency_batch": latency_batch,
    "latency_distribution": latency_distribution,
    "training_curves": training_curves,
    "pareto": pareto,
}


def make_plots(report: Report, history: list[dict[str, Any]]) -> dict[str, bytes]:
    """PNG bytes of each plot that has data: accuracy vs latency, latency vs batch, distributions, curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {name: draw(plt, report, history) for name, draw in DRAW.items()}
    return {name: _png(fig) for name, fig in figures.items() if fig is not None}
