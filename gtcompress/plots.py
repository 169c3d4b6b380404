"""The report's plots, each a function of the report's content; PNG bytes, drawn with matplotlib (Agg)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from .records import Report, fastest

PLOTS = {
    "accuracy_latency": "Top-1 accuracy vs p50 latency",
    "latency_batch": "p50 latency by batch size (each artefact at its fastest setting)",
    "latency_distribution": "Latency distribution (every call, fastest setting)",
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


# A legend beside its axes, its top left corner at their top right: whatever it lists, it covers no point.
LEGEND = {"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.02, 1), "borderaxespad": 0}
MARKERS = "os^DvPX*"


def _legend_outside(fig: Any, ax: Any) -> None:
    """`ax`'s legend right of it, the figure widened by its width and heightened by what it needs beyond the axes':
    the plot keeps its size and a page its width however many series the rows bring."""
    legend = ax.legend(**LEGEND)
    box, axes = legend.get_window_extent(), ax.get_window_extent()
    fig.set_figwidth(fig.get_figwidth() + box.width / fig.dpi)
    fig.set_figheight(fig.get_figheight() + max(0, box.height - axes.height) / fig.dpi)


def _colours(plt: Any, n: int) -> list[Any]:
    """`n` distinct colours where the palette has them (tab20 past tab10's ten), cycling beyond."""
    palette = plt.get_cmap("tab10" if n <= 10 else "tab20").colors
    return [palette[i % len(palette)] for i in range(n)]


def _artefacts(report: Report) -> list[tuple[str, str, str]]:
    """Each timed (stage, precision, backend): in the table's row order, then the backends' (the headline first)."""
    rows = {(r.stage, r.precision): i for i, r in enumerate(report.rows)}
    backends = {b: i for i, b in enumerate(report.backends)}
    timed = {(r.stage, r.precision, r.backend) for r in report.bench}
    return sorted(timed, key=lambda k: (rows.get(k[:2], len(rows)), k[:2], backends.get(k[2], len(backends)), k[2]))


def _label(report: Report, stage: str, precision: str, backend: str) -> str:
    return f"{report.titles.get(stage, stage)} {precision}, {backend}"


def accuracy_latency(plt: Any, report: Report, history: list[dict[str, Any]]) -> Any:
    import matplotlib.ticker

    primary, b = report.primary_backend, report.batch_size
    points = [r for r in report.rows if primary in r.p50_ms]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    stages, precisions = list(dict.fromkeys(r.stage for r in points)), list(dict.fromkeys(r.precision for r in points))
    colours = _colours(plt, len(stages))
    for r in points:  # a model's variants share a colour, a precision its marker: a family reads at a glance
        marker = MARKERS[precisions.index(r.precision) % len(MARKERS)]
        ax.scatter(r.p50_ms[primary], r.top1, s=40, color=colours[stages.index(r.stage)], marker=marker, label=r.name)
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
    _legend_outside(fig, ax)
    return fig


def latency_batch(plt: Any, report: Report, history: list[dict[str, Any]]) -> Any:
    """One line per artefact (stage, precision, backend), at each batch size its fastest setting's p50: the
    settings themselves are in the report's every-measurement table."""
    if not report.bench:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    artefacts = _artefacts(report)
    models = list(dict.fromkeys(k[:2] for k in artefacts))
    colours, backends = _colours(plt, len(models)), list(dict.fromkeys(k[2] for k in artefacts))
    students = {r.stage for r in report.rows if r.role == "student"}
    batches = sorted({r.batch_size for r in report.bench})
    for stage, precision, backend in artefacts:  # a model's backends share its colour, a backend its marker
        best = [r for b in batches if (r := fastest(report.bench, stage, backend, precision, b))]
        ax.plot(
            [r.batch_size for r in best],
            [r.p50_ms for r in best],
            marker=MARKERS[backends.index(backend) % len(MARKERS)],
            color=colours[models.index((stage, precision))],
            linestyle="-" if stage in students else "--",  # the teachers' lines dashed
            label=_label(report, stage, precision, backend),
        )
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency, ms", title=PLOTS["latency_batch"])
    ax.grid(alpha=0.3)
    _legend_outside(fig, ax)
    return fig


def latency_distribution(plt: Any, report: Report, history: list[dict[str, Any]]) -> Any:
    b = report.batch_size
    best = (fastest(report.bench, stage, backend, precision, b) for stage, precision, backend in _artefacts(report))
    at_b = [r for r in best if r and r.samples_ms]
    if not at_b:
        return None
    fig, ax = plt.subplots(figsize=(6, max(3, 0.35 * len(at_b) + 1)))
    labels = [f"{_label(report, r.stage, r.precision, r.backend)} ({r.setting.label()})" for r in at_b]
    ax.boxplot([r.samples_ms for r in at_b], orientation="horizontal", showfliers=True, tick_labels=labels)
    ax.set(xscale="log", xlabel=f"latency per call, ms (batch {b})", title=PLOTS["latency_distribution"])
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()  # the table's order, top down
    # widened by the names' width: the boxes keep theirs however long the names
    fig.set_figwidth(fig.get_figwidth() + max(t.get_window_extent().width for t in ax.get_yticklabels()) / fig.dpi)
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
    acc.grid(alpha=0.3)
    loss.grid(alpha=0.3)
    _legend_outside(fig, loss)  # both axes' lines are the same stages'
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
    ax.grid(alpha=0.3)
    _legend_outside(fig, ax)  # its points grow with the rows: no corner is sure to be free
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
