"""The report's tables as strings, the same cells in every output (Markdown, HTML, the terminal): the helpers they
share, and the teachers' logit-scale table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.table import Table

from .records import Report


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table: pipes in cells escaped, numeric columns right-aligned; ends with a newline."""
    rows = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    align = ["---:" if _numeric([r[i] for r in rows]) else "---" for i in range(len(headers))]
    return "\n".join("| " + " | ".join(line) + " |" for line in [list(headers), align, *rows]) + "\n"


def _numeric(column: list[str]) -> bool:
    """A column of numbers, "–" standing for a value not measured; at least one number."""
    values = [c for c in column if c != "–"]
    return bool(values) and all(c and (c[0].isdigit() or c[0] in "+-−") and any(d.isdigit() for d in c) for c in values)


def scale_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Each teacher's accuracy beside its logit scale: what its students' temperature sees of it."""
    fp32 = {r.stage: r.top1 for r in report.rows if r.precision == "fp32"}
    t = next((s.temperature for s in report.scales.values()), None)
    cols = ["teacher", "top-1 %", "logit std (median)", "std p95", "max |logit|", f"entropy at T {t:g}", "log C"]
    return cols, [
        [
            report.titles.get(stage, stage),
            fmt(fp32.get(stage), ".2f"),
            f"{s.std_median:.2f}",
            f"{s.std_p95:.2f}",
            f"{s.max_abs:.1f}",
            f"{s.entropy:.3f}",
            f"{s.log_classes:.3f}",
        ]
        for stage, s in report.scales.items()
    ]


SCALE_NOTE = (
    "A student's KD divides its teacher's logits by one temperature: a teacher with larger logits gives sharper "
    "targets (lower entropy) at that T, as if at a lower temperature."
)


def scale_table(report: Report) -> Table:
    table = Table(title="teachers' logit scale (test split)", box=box.SIMPLE_HEAVY, title_justify="left")
    cols, cells = scale_rows(report)
    for i, col in enumerate(cols):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in cells:
        table.add_row(*row)
    return table
