"""Report: what compression bought — the stages' accuracy and size, as tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from .rundir import STAGES

STAGE_TITLES = {
    "standard_teacher": "Standard Teacher",
    "generous_teacher": "Generous Teacher",
    "student": "student <- GT",
    "student_from_standard": "student <- ST",
    "student_ce": "student (CE only)",
}


def stage_table(metrics: dict[str, Any]) -> Table:
    """One row per trained stage: accuracy, size and training cost."""
    table = Table(title="gtcompress distill", title_justify="left")
    for col in ("stage", "model", "top-1 %", "top-5 %", "params", "MMACs", "epochs", "train s"):
        table.add_column(col, justify="left" if col in ("stage", "model") else "right")
    for name in STAGES:
        m = metrics.get(name)
        if m is None:
            continue
        top5 = f"{m['top5']:.2f}" if "top5" in m else "-"
        table.add_row(
            STAGE_TITLES[name], m["arch"], f"{m['top1']:.2f}", top5, f"{m['params'] / 1e6:.2f}M",
            f"{m['macs'] / 1e6:.1f}", str(m["epochs"]), f"{m['train_seconds']:.0f}",
        )
    return table
