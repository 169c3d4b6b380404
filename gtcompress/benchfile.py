"""bench.json: its location, and the queries the report and the tables ask of it.

bench.json (written by `gtcompress bench`, contract in the README) holds `results`: one record per model x
backend x precision x batch size with latency percentiles and throughput; `device`, `versions`, `models`,
`skipped` and `missing` say where and what was measured.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from .rundir import RunDir, read_json
from .stages import DEPLOYABLE_TEACHERS

BENCH_FILE = "bench.json"


def reference_teacher(results: list[dict[str, Any]]) -> str | None:
    """The teacher that speed-ups are measured against: the Generous Teacher, else the Standard Teacher."""
    measured = {r["model"] for r in results}
    return next((m for m in DEPLOYABLE_TEACHERS if m in measured), None)


def find(results: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in results if all(r.get(k) == v for k, v in match.items())), None)


def speedup(results: list[dict[str, Any]], record: dict[str, Any]) -> float | None:
    """Teacher p50 / this p50, on the same backend and batch size (the teacher at fp32)."""
    teacher = reference_teacher(results)
    ref = find(results, model=teacher, backend=record["backend"], precision="fp32", batch_size=record["batch_size"])
    return ref["p50_ms"] / record["p50_ms"] if ref and record["model"] != teacher else None


RESULT_COLUMNS = ("model", "backend", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s")


def result_cells(r: dict[str, Any]) -> list[str]:
    """A bench.json result as the cells under RESULT_COLUMNS (the terminal table and the report share them)."""
    return [
        r["model"],
        r["backend"],
        r["precision"],
        str(r["batch_size"]),
        *(f"{r[key]:.3f}" for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")),
        f"{r['throughput']:.1f}",
    ]


def in_order(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results grouped by batch size, then model, then backend and precision."""
    return sorted(results, key=lambda r: (r["batch_size"], r["model"], r["backend"], r["precision"]))


def bench_table(bench: dict[str, Any]) -> Table:
    """Every measurement: latency percentiles, throughput and speed-up vs the teacher."""
    teacher = reference_teacher(bench["results"]) or "teacher"
    dev = bench["device"]
    table = Table(
        title=f"gtcompress bench on {dev['gpu'] if dev['cuda'] else dev['cpu']} ({dev['threads']} threads)",
        caption=f"× faster: the {teacher}'s fp32 p50 on the same backend and batch over the row's",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
        caption_justify="left",
    )
    rows = []
    for r in in_order(bench["results"]):
        ratio = speedup(bench["results"], r)
        rows.append([*result_cells(r), f"{ratio:.1f}×" if ratio else ""])
    for i, col in enumerate((*RESULT_COLUMNS, "× faster")):  # as wide as their cells: nothing cut in a log
        width = max([len(col), *(len(row[i]) for row in rows)])
        table.add_column(col, justify="left" if i < 3 else "right", no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row)
    return table


def load_bench(run: RunDir) -> dict[str, Any] | None:
    path = run.path / BENCH_FILE
    return read_json(path) if path.is_file() else None
