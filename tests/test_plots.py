"""Plots: legible however many rows the report has (one line per artefact, no legend over the data)."""

import pytest
from conftest import MANY_BACKENDS, MANY_BATCHES, MANY_PRECISIONS, MANY_STAGES, many_rows_history, many_rows_report

from gtcompress.plots import DRAW


@pytest.fixture(scope="module")
def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def drawn(plt, name: str):
    """The plot of the many-row report, laid out as make_plots saves it."""
    fig = DRAW[name](plt, many_rows_report(), many_rows_history())
    fig.tight_layout()
    fig.canvas.draw()
    return fig


def test_latency_by_batch_draws_each_artefact_once_at_its_fastest_setting(plt):
    report = many_rows_report()
    (ax,) = drawn(plt, "latency_batch").axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    expected = [
        f"{title} {precision}, {backend}"
        for title in MANY_STAGES.values()
        for precision in MANY_PRECISIONS
        for backend in MANY_BACKENDS
    ]
    assert len(ax.get_lines()) == len(expected) and sorted(lines) == sorted(expected), "one line per artefact"
    for label, line in lines.items():
        timed = [r for r in report.bench if f"{MANY_STAGES[r.stage]} {r.precision}, {r.backend}" == label]
        fastest = {b: min(r.p50_ms for r in timed if r.batch_size == b) for b in MANY_BATCHES}
        assert dict(zip(line.get_xdata(), line.get_ydata())) == fastest, "each batch size at its fastest setting"


@pytest.mark.parametrize("name", ["accuracy_latency", "latency_batch", "training_curves", "pareto"])
def test_a_legend_stands_outside_the_axes_within_the_figure(plt, name):
    fig = drawn(plt, name)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends, "the series are named"
    for legend in legends:
        box = legend.get_window_extent()
        assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes), "no series hidden under it"
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
    for ax in fig.axes:  # the figure grew for the legend: the plot kept its size (6 x 4 in, less its labels)
        assert ax.get_window_extent().width / fig.dpi > 3.9 and ax.get_window_extent().height / fig.dpi > 2.8


def test_the_latency_distribution_shows_each_artefact_once_with_room_for_its_name(plt):
    (ax,) = drawn(plt, "latency_distribution").axes
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert len(names) == len(set(names)) == len(MANY_STAGES) * len(MANY_PRECISIONS) * len(MANY_BACKENDS)
    assert all(name.endswith("(2 threads)") for name in names), "the fastest setting, named"
    assert ax.get_window_extent().width / ax.figure.dpi > 4.5, "the boxes are not squeezed by long names"
