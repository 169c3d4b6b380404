"""What to ship: the accuracy-vs-latency Pareto front of the students' and the teachers' artefacts, and the pick.

A point is one model at one precision on one backend and batch size: its role (student or teacher), verified
file, top-1 and p50. The teachers are candidates too: a student that is not faster than its teacher buys
nothing, and a deployment should ship the teacher then.
"""

from __future__ import annotations

import math

from .records import ModelFile, Pareto, Point, Recommendation, ReportRow, StageRecord
from .rundir import RunDir
from .stages import deployable_teachers, distilled_students


def _top1(p: Point) -> float:
    """Top-1 as compared: to a millionth of a point, for the same count of correct images reached by two sums
    (the checkpoint's and an export's) differs in its last bits, and that must not decide between them."""
    return round(p.top1, 6)


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point beats on both accuracy and latency (better or equal on both, better on one),
    fastest first."""

    def dominated(p: Point) -> bool:
        return any(
            _top1(q) >= _top1(p) and q.p50_ms <= p.p50_ms and (_top1(q) > _top1(p) or q.p50_ms < p.p50_ms)
            for q in points
        )

    return sorted((p for p in points if not dominated(p)), key=lambda p: (p.p50_ms, -_top1(p)))


def faster_than_the_teachers(points: list[Point]) -> list[Point]:
    """The students faster than every teacher artefact (all of them where no teacher is measured)."""
    fastest = min((p.p50_ms for p in points if p.role == "teacher"), default=float("inf"))
    return [p for p in points if p.role == "student" and p.p50_ms < fastest]


def at_chance(p: Point | StageRecord, chance: float | None) -> bool:
    """A model not shown to beat a guess (`chance`: see `chance_line`): never recommended, whatever its speed."""
    return chance is not None and p.top1 <= chance


def ties(a: Point, b: Point) -> bool:
    """Two p50s whose bootstrap intervals overlap: the next run could order them either way."""
    if a is b:
        return True
    return (
        a.p50_interval is not None
        and b.p50_interval is not None
        and (a.p50_interval[0] <= b.p50_interval[1] and b.p50_interval[0] <= a.p50_interval[1])
    )


def _pick(fits: list[Point], why: str) -> Recommendation:
    """The most accurate; among those, the fastest, unless another's p50 ties with it: then the smallest file. A
    smaller file as accurate that lost on speed is named, with both p50s, so the pick can be checked."""
    best = max(_top1(p) for p in fits)
    fastest = min((p for p in fits if _top1(p) == best), key=lambda p: (p.p50_ms, p.bytes or 0))
    tied = [p for p in fits if _top1(p) == best and ties(p, fastest)]
    pick = min(tied, key=lambda p: (p.bytes or float("inf"), p.p50_ms))
    if pick is not fastest:
        why += (
            f"; its p50 ties with {fastest.name}'s {fastest.p50_ms:.3f} ms within their bootstrap intervals, "
            "so the smaller file"
        )
    smaller = [p for p in fits if _top1(p) == best and (p.bytes or 0) < (pick.bytes or 0) and p not in tied]
    if smaller:
        s = min(smaller, key=lambda p: p.bytes or 0)
        why += (
            f"; {s.name} is as accurate and smaller ({(s.bytes or 0) / 1e6:.2f} MB) but slower: p50 "
            f"{s.p50_ms:.3f} ms, outside the pick's bootstrap interval"
        )
    return Recommendation(reason=why, pick=pick)


def recommend(points: list[Point], budget_ms: float | None = None) -> Recommendation:
    """With a budget: the most accurate point within it, teachers included. Without one: the most accurate
    student that is faster than every teacher artefact, else the most accurate teacher artefact. Latencies that tie
    within their noise go to the smaller file; and why. No pick, with the reason, when no point fits the budget or
    every model is at chance."""
    points = [p for p in points if not at_chance(p, p.chance)]
    if not points:
        return Recommendation(reason="every model is at or near chance (not shown to beat a guess): train longer")
    if budget_ms is not None:
        fits, why = (
            [p for p in points if p.p50_ms <= budget_ms],
            f"the most accurate within the {budget_ms:g} ms budget",
        )
    elif faster_than_the_teachers(points):
        fits, why = faster_than_the_teachers(points), "the most accurate student faster than the teacher"
    else:
        fits, why = [p for p in points if p.role == "teacher"], "no student is faster than the teacher"
    if not fits:
        return Recommendation(reason=f"no verified artefact runs within the {budget_ms:g} ms budget")
    return _pick(fits, why)


def no_speed_line(points: list[Point], backend: str | None, batch_size: int) -> str | None:
    """One plain line when no student is faster than the fastest teacher artefact, else None."""
    students, teachers = [p for p in points if p.role == "student"], [p for p in points if p.role == "teacher"]
    if not students or not teachers or faster_than_the_teachers(points):
        return None
    s, t = min(students, key=lambda p: p.p50_ms), min(teachers, key=lambda p: p.p50_ms)
    return (
        f"On {backend} at batch {batch_size} the students buy no speed over the teacher: the fastest student, "
        f"{s.name}, takes {s.p50_ms:.3f} ms against {t.p50_ms:.3f} ms for {t.name}"
        + (f" (each at its best setting: {s.setting}, {t.setting})." if s.setting and t.setting else ".")
    )


def which_student(
    run: RunDir,
    records: dict[str, StageRecord],
    rows: list[ReportRow],
    backend: str | None,
    batch_size: int,
    budget_ms: float | None,
) -> tuple[Pareto, Recommendation]:
    """The front (every distilled student and deployable teacher x precision on the headline backend, the front,
    and the line saying so where the students buy no speed) and the recommendation (no pick when nothing is
    benchmarked or nothing fits the budget; its reason says why)."""
    budget_set_on = None  # where the run's budget was checked, when that differs from here
    check = run.candidate_check() if budget_ms is None else None
    if check is not None:
        budget_ms = check.budget_ms
        if (check.backend, check.batch_size) != (backend, batch_size):
            budget_set_on = check.target()
    roles = {
        **{t: "teacher" for t in deployable_teachers(records)},
        **{s: "student" for s in distilled_students(records, qat=True)},
    }
    points = [
        Point(
            **r.model_dump(include=set(ModelFile.model_fields)),
            role=roles[r.stage],
            backend=backend,
            p50_ms=r.p50_ms[backend],
            p50_interval=r.p50_interval.get(backend),
            setting=r.setting.get(backend),
            chance=_chance(records[r.stage]),
        )
        for r in rows
        if r.stage in roles and backend in r.p50_ms
    ]
    pareto = Pareto(
        backend=backend,
        batch_size=batch_size,
        budget_ms=budget_ms,
        budget_set_on=budget_set_on,
        points=points,
        front=[p.name for p in pareto_front(points)],
        no_speed=no_speed_line(points, backend, batch_size),
    )
    return pareto, recommend(points, budget_ms) if points else Recommendation(
        reason="nothing benchmarked yet: run gtcompress bench"
    )


def _chance(record: StageRecord) -> float | None:
    """The top-1 a guess among the record's classes reaches with 99% probability on its test split (one-sided
    binomial, normal approximation): a model at or below it has not been shown to have learned anything."""
    if not record.num_classes or not record.test_images:
        return None
    p = 1 / record.num_classes
    return 100 * (p + 2.33 * math.sqrt(p * (1 - p) / record.test_images))


def warnings(records: dict[str, StageRecord]) -> list[str]:
    """What a user must know before trusting the run: a model at chance, a GT less accurate than its ST."""
    out = [
        f"{r.title} is at or near chance (top-1 {r.top1:.2f}% with {r.num_classes} classes, {r.test_images} test "
        f"images): not recommended; train it longer (it had {r.epochs} epochs)"
        for r in records.values()
        if at_chance(r, _chance(r))
    ]
    st = next((r for r in records.values() if r.role == "standard"), None)
    gt = next((r for r in records.values() if r.role == "generous"), None)
    if st is not None and gt is not None and gt.top1 < st.top1:
        out.append(f"the Generous Teacher ({gt.top1:.2f}%) is less accurate than the Standard Teacher ({st.top1:.2f}%)")
    return out


def recommendation_line(pareto: Pareto, recommendation: Recommendation) -> str:
    """The recommendation in one line (the printed table and report.md), after the no-speed line if there is one."""
    p = recommendation.pick
    before = f"{pareto.no_speed} " if pareto.no_speed else ""
    if p is None:
        return f"{before}Recommended: none ({recommendation.reason})."
    return before + (
        f"Recommended: {p.name} ({p.file}, {p.precision}, {p.backend}, {p.setting}): top-1 {p.top1:.2f}%, p50 "
        f"{p.p50_ms:.3f} ms at batch {pareto.batch_size}, {(p.bytes or 0) / 1e6:.2f} MB; {recommendation.reason}."
    )


def pareto_rows(pareto: Pareto) -> tuple[list[str], list[list[str]]]:
    front = set(pareto.front)
    cells = [
        [
            p.name,
            p.role,
            p.precision,
            p.setting or "–",
            f"{p.top1:.2f}",
            f"{p.p50_ms:.3f}",
            f"{(p.bytes or 0) / 1e6:.2f}",
            "yes" if p.name in front else "",
        ]
        for p in sorted(pareto.points, key=lambda p: p.p50_ms)
    ]
    return ["model", "role", "precision", "setting", "top-1 %", "p50 ms", "MB", "on the front"], cells


def pareto_note(p: Pareto) -> str:
    budget = f"; the latency budget is {p.budget_ms:g} ms" if p.budget_ms is not None else ""
    if p.budget_set_on:
        budget += f" (checked before training on {p.budget_set_on}: here it is applied to these p50s)"
    return (
        f"Every student distilled from the GT and every teacher at every verified precision, each at its best "
        f"setting, top-1 against p50 on {p.backend} at batch {p.batch_size}{budget}. On the front: no other "
        f"artefact is both as accurate and as fast."
    )
