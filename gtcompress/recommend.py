"""Which student to ship: the accuracy-vs-latency Pareto front of the students' artefacts, and the pick.

A point is one student at one precision on one backend and batch size: its verified file, top-1 and p50.
"""

from __future__ import annotations

from typing import Any

from .rundir import RunDir, read_json
from .stages import distilled_students

Point = dict[str, Any]  # at least "top1" (%) and "p50_ms"


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point beats on both accuracy and latency (better or equal on both, better on one),
    fastest first."""

    def dominated(p: Point) -> bool:
        return any(
            q["top1"] >= p["top1"]
            and q["p50_ms"] <= p["p50_ms"]
            and (q["top1"] > p["top1"] or q["p50_ms"] < p["p50_ms"])
            for q in points
        )

    return sorted((p for p in points if not dominated(p)), key=lambda p: (p["p50_ms"], -p["top1"]))


def recommend(points: list[Point], budget_ms: float | None = None) -> tuple[Point | None, str]:
    """The most accurate point within the budget (without one: on the front), the faster (then smaller) one on a
    tie; and why.

    None, with the reason, when no point fits the budget.
    """
    fits = [p for p in points if budget_ms is None or p["p50_ms"] <= budget_ms]
    if not fits:
        return None, f"no verified artefact runs within the {budget_ms:g} ms budget"
    best = max(fits, key=lambda p: (p["top1"], -p["p50_ms"], -(p.get("bytes") or 0)))
    why = (
        f"the most accurate within the {budget_ms:g} ms budget"
        if budget_ms is not None
        else "the most accurate on the accuracy-latency front"
    )
    return best, why


def which_student(
    run: RunDir,
    metrics: dict[str, Any],
    rows: list[dict[str, Any]],
    backend: str | None,
    batch_size: int,
    budget_ms: float | None,
) -> dict[str, Any]:
    """`pareto` (every distilled student x precision on the headline backend, and the front) and
    `recommendation` (None when nothing is benchmarked or nothing fits the budget; `reason` says why)."""
    budget_set_on = None  # where the run's budget was checked, when that differs from here
    if budget_ms is None and run.candidates.is_file():
        check = read_json(run.candidates)
        budget_ms = check["budget_ms"]
        if (check["backend"], check["batch_size"]) != (backend, batch_size):
            budget_set_on = f"{check['backend']} {check['precision']} at batch {check['batch_size']}"
    students = set(distilled_students(metrics))
    points = [
        {
            "name": r["name"],
            "model": r["model"],
            "arch": r["arch"],
            "precision": r["precision"],
            "file": r["file"],
            "bytes": r["bytes"],
            "top1": r["top1"],
            "backend": backend,
            "p50_ms": r["p50_ms"][backend],
        }
        for r in rows
        if r["model"] in students and backend in r["p50_ms"]
    ]
    pick, why = recommend(points, budget_ms) if points else (None, "nothing benchmarked yet: run gtcompress bench")
    return {
        "pareto": {
            "backend": backend,
            "batch_size": batch_size,
            "budget_ms": budget_ms,
            "budget_set_on": budget_set_on,
            "points": points,
            "front": [p["name"] for p in pareto_front(points)],
        },
        "recommendation": {**pick, "reason": why} if pick else {"reason": why},
    }


def recommendation_line(report: dict[str, Any]) -> str:
    """The recommendation in one line (the printed table and report.md)."""
    r, b = report["recommendation"], report["pareto"]["batch_size"]
    if "file" not in r:
        return f"Recommended: none ({r['reason']})."
    return (
        f"Recommended: {r['name']} ({r['file']}, {r['precision']}, {r['backend']}): top-1 {r['top1']:.2f}%, "
        f"p50 {r['p50_ms']:.3f} ms at batch {b}, {r['bytes'] / 1e6:.2f} MB; {r['reason']}."
    )


def pareto_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    front = set(report["pareto"]["front"])
    cells = [
        [
            p["name"],
            p["precision"],
            f"{p['top1']:.2f}",
            f"{p['p50_ms']:.3f}",
            f"{p['bytes'] / 1e6:.2f}",
            "yes" if p["name"] in front else "",
        ]
        for p in sorted(report["pareto"]["points"], key=lambda p: p["p50_ms"])
    ]
    return ["student", "precision", "top-1 %", "p50 ms", "MB", "on the front"], cells


def pareto_note(report: dict[str, Any]) -> str:
    p = report["pareto"]
    budget = f"; the latency budget is {p['budget_ms']:g} ms" if p["budget_ms"] is not None else ""
    if p.get("budget_set_on"):
        budget += f" (checked before training on {p['budget_set_on']}: here it is applied to these p50s)"
    return (
        f"Every student distilled from the GT at every verified precision, top-1 against p50 on {p['backend']} "
        f"at batch {p['batch_size']}{budget}. On the front: no other artefact is both as accurate and as fast."
    )
