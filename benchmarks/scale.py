"""What the Generous Teacher teaches: its knowledge or its logit scale. KD students of the GT, the ST and the
born-again teacher, each teacher's logits also rescaled to another's scale, and LS-KD students (scale-free).

    nice -n 19 python -m benchmarks.scale --jobs 2      # ~4.5 CPU-hours planned; re-run to resume, runs are kept

The plan, fixed before any run of this grid: benchmarks/results/scale-plan.md. Per (pair, teacher seed) a cell of
`gtcompress distill` runs, every KD student with the authors' KD (CE 0.1 + KD 0.9 at T 20), two student seeds j:
  compare     --compare: ST, GT (the authors' loss, from scratch), born-again teacher, KD students of each and the
              CE-only student (student seed 0); every teacher's logit scale recorded in its metrics.json
  gt<j>/st<j> (j >= 1) KD students of the loaded GT and ST
  a1_<j>      KD student of the ST with its logits times median std(GT) / median std(ST) (training split)
  a3_<j>      KD student of the GT at the ST's scale: teacher_scale match:standard_teacher
  bag_<j>     KD student of the born-again teacher at the GT's scale
  ls_gt<j>/ls_st<j>/ls_ba<j>  LS-KD students of the GT, the ST and the born-again teacher (the product's LS-KD)
Every student is also evaluated on a 10,000-image test split. Writes benchmarks/results/scale.{json,md}.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import grid, method, paper
from benchmarks.method import Cell, paired_test, student_seed
from gtcompress.errors import UserError
from gtcompress.tables import markdown_table

PRIMARY = paper.PRIMARY
SETTING = paper.SETTINGS[PRIMARY]  # synthetic100 with the authors' KD at T 20
PAIRS = (paper.ABLATION_PAIR, paper.PAIRS[0])  # resnet10t -> mobilenetv3_small_050 first: the primary pair
TEACHER_SEEDS = tuple(range(6))
STUDENT_SEEDS = 2
TEACHERS = {"st": "standard_teacher", "gt": "generous_teacher", "ba": "born_again_teacher"}
# Scaled KD arms: name -> (the teacher taught from, the teacher whose scale it is given)
SCALED = {"a1_": ("st", "gt"), "a3_": ("gt", "st"), "bag_": ("ba", "gt")}
LSKD = {
    "student.method": "lskd"
}  # the product's LS-KD defaults (CE 0.1 + 9 KD at k 2): no temperature to scale against


def _median(run: grid.Task, stage: str) -> float:
    """A teacher's median per-image logit std on the training split, as the compare run recorded it."""
    return grid.metrics(run)[stage]["logit_scale"]["train_std_median"]


def cell_runs(cell: Cell, root: Path, device: str = "cpu", extra: dict[str, Any] | None = None) -> dict[str, grid.Task]:
    """Every run of a cell in the order they run; later runs load the compare run's teachers."""
    d, overrides = method.cell_dir(cell, root), {**SETTING.overrides, **(extra or {})}
    common = ("--recipe", SETTING.recipe, "--teacher", cell.teacher, "--student", cell.student, "--device", device)

    def task(name: str, seed: int, sets: dict[str, Any], stages: tuple[str, ...], *args: str, later=None):
        options = (*common, "--seed", str(seed), "--method", "kd", *args, *grid.sets({**overrides, **sets}))
        return grid.Task(d / name, options, stages, later)

    compare = task("compare", cell.seed, {}, method.compare_stages(SETTING.recipe, overrides), "--compare")
    ckpt = lambda arm: str(compare.out / f"{TEACHERS[arm]}.pt")  # noqa: E731

    def student_of(name: str, j: int, arm: str, sets: dict[str, Any] | None = None, later=None) -> grid.Task:
        """A student of one of the compare run's teachers, loaded as this run's GT beside its ST."""
        loaded = {"generous.checkpoint": ckpt(arm), **(sets or {})}
        seed = student_seed(cell.seed, j)
        return task(name, seed, loaded, method.LOADED_STAGES, "--teacher-checkpoint", ckpt("st"), later=later)

    def scaled(prefix: str, j: int) -> grid.Task:
        arm, to = SCALED[prefix]
        if (arm, to) == ("gt", "st"):  # the primary arm uses the product's own match, resolved in its run
            return student_of(f"{prefix}{j}", j, arm, {"student.kd.teacher_scale": "match:standard_teacher"})

        def ratio() -> dict[str, Any]:  # read once the compare run has recorded both teachers' scales
            return {"student.kd.teacher_scale": _median(compare, TEACHERS[to]) / _median(compare, TEACHERS[arm])}

        return student_of(f"{prefix}{j}", j, arm, later=ratio)

    runs = {"compare": compare}
    for j in range(STUDENT_SEEDS):
        if j:
            runs.update({f"{arm}{j}": student_of(f"{arm}{j}", j, arm) for arm in ("gt", "st")})
        runs.update({f"{p}{j}": scaled(p, j) for p in SCALED})
        runs.update({f"ls_{arm}{j}": student_of(f"ls_{arm}{j}", j, arm, LSKD) for arm in TEACHERS})
    return runs


def cells(pairs: Sequence[tuple[str, str]], seeds: Sequence[int]) -> list[Cell]:
    """Every (pair, seed), seeds outermost: an interruption leaves whole seeds done."""
    return [Cell(PRIMARY, t, s, seed) for seed in seeds for t, s in pairs]


def values() -> dict[str, tuple[str, str]]:
    """Every value of a cell: name -> (run, stage). Student values end in their student seed j."""
    out = {name: ("compare", stage) for name, stage in TEACHERS.items()}
    out |= {
        "ce": ("compare", "student_ce"),
        "kd_gt0": ("compare", "student"),
        "kd_ba0": ("compare", "student_from_born_again"),
    }
    out["kd_st0"] = ("compare", "student_from_standard")
    for j in range(STUDENT_SEEDS):
        out |= {f"kd_{arm}{j}": (f"{arm}{j}", "student") for arm in ("gt", "st") if j}
        out |= {f"{p}{j}": (f"{p}{j}", "student") for p in SCALED}
        out |= {f"ls_{arm}{j}": (f"ls_{arm}{j}", "student") for arm in TEACHERS}
    return out


def cell_record(cell: Cell, runs: dict[str, grid.Task]) -> dict[str, Any]:
    """One teacher seed's top-1 values on the 10,000-image split, its teachers' scales, the scales its students
    were given, and its cost."""
    record: dict[str, Any] = {**asdict(cell)}
    record |= {name: method.big_test_top1(runs[r], s) for name, (r, s) in values().items()}
    for name in ("kd_gt", "kd_st", *SCALED, "ls_gt", "ls_st", "ls_ba"):
        record[name.rstrip("_")] = statistics.fmean(record[f"{name}{j}"] for j in range(STUDENT_SEEDS))
    compare = grid.metrics(runs["compare"])
    record["scales"] = {arm: compare[stage]["logit_scale"] for arm, stage in TEACHERS.items()}
    record["teacher_scale"] = {
        f"{p}{j}": grid.metrics(runs[f"{p}{j}"])["student"]["teacher_scale"]
        for p in SCALED
        for j in range(STUDENT_SEEDS)
    }
    record["small_test"] = {name: grid.metrics(runs[r])[s]["top1"] for name, (r, s) in values().items()}
    record["paper_grid"] = _paper_cell(cell, record)
    costs = [grid.run_cost(r) for r in runs.values()]
    return {**record, **{key: sum(c[key] for c in costs) for key in method.COST_KEYS}}


SHARED = ("st", "gt", "ba", "ce", "kd_gt0", "kd_st0", "kd_ba0")  # the compare run's values the paper grid has too


def _paper_cell(cell: Cell, record: dict[str, Any]) -> dict[str, Any] | None:
    """The paper grid's values of the same teacher seed, and whether this compare run reproduced them exactly."""
    path = method.cell_dir(cell, grid.REPO / "benchmarks/results/paper-cells").with_suffix(".json")
    paper_cell = grid.stored_record(path)
    if paper_cell is None:
        return None
    theirs = {k: paper_cell[k] for k in SHARED}
    return {"values": theirs, "code": paper_cell["code"], "same": all(record[k] == v for k, v in theirs.items())}


def unit(record: dict[str, Any], a: str, b: str) -> list[float]:
    """Per student seed: the student of arm `a` minus that of `b` (same initial weights and data order)."""
    return [record[f"{a}{j}"] - record[f"{b}{j}"] for j in range(STUDENT_SEEDS)]


PRIMARY_TEST = ("a3_", "kd_st")  # the GT at the ST's scale minus the ST: same scale, other teacher
H1 = ("kd_gt", "kd_st")
SECONDARY = {  # name -> (minuend, subtrahend), per student seed then averaged per teacher seed
    "gt_minus_st_scaled_to_gt": ("kd_gt", "a1_"),
    "gt_minus_born_again_scaled_to_gt": ("kd_gt", "bag_"),
    "st_scaled_to_gt_minus_st": ("a1_", "kd_st"),
    "gt_minus_gt_at_st_scale": ("kd_gt", "a3_"),
    "lskd_gt_minus_st": ("ls_gt", "ls_st"),
    "lskd_gt_minus_born_again": ("ls_gt", "ls_ba"),
}


def decide(primary: dict[str, Any], h1: dict[str, Any]) -> list[str]:
    """The plan's rule on the primary 95% interval: beyond scale (lower end > 0), scale explains most of H1 (upper
    end < half of this grid's H1); both can hold; else not distinguishable."""
    if primary["ci95"] is None:
        return ["not enough seeds"]
    lo, hi = primary["ci95"]
    readings = []
    if lo > 0:
        readings.append("the GT teaches something beyond its logit scale")
    if hi < h1["mean"] / 2:
        readings.append("scale explains most of H1")
    return readings or ["not distinguishable at this precision"]


def summarize_pair(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One pair: H1, the primary test with its variance split and reading, the secondary contrasts, the scales."""
    per_seed = lambda a, b: [unit(r, a, b) for r in rs]  # noqa: E731
    tested = lambda a, b: paired_test([statistics.fmean(d) for d in per_seed(a, b)])  # noqa: E731
    out: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "h1": tested(*H1), "primary": tested(*PRIMARY_TEST)}
    out["primary"]["variance"] = method.variance_components(per_seed(*PRIMARY_TEST))
    out["reading"] = decide(out["primary"], out["h1"])
    out["secondary"] = {name: tested(a, b) for name, (a, b) in SECONDARY.items()}
    names = sorted(k for k in rs[0] if isinstance(rs[0][k], float) and k not in method.COST_KEYS)
    out["values"] = {n: grid.summarize([r[n] for r in rs]) for n in names}
    out["scales"] = {
        f"{arm}_{key}": grid.summarize([r["scales"][arm][key] for r in rs])
        for arm in TEACHERS
        for key in ("std_median", "max_abs", "entropy", "train_std_median")
    }
    out["gt_over_st_std"] = grid.summarize(
        [r["scales"]["gt"]["train_std_median"] / r["scales"]["st"]["train_std_median"] for r in rs]
    )
    return out


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pair; the primary test Holm-adjusted over the pairs run."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["teacher"], r["student"]), []).append(r)
    out = [
        {"teacher": t, "student": s, **summarize_pair(sorted(rs, key=lambda r: r["seed"]))}
        for (t, s), rs in groups.items()
    ]
    for s, p in zip(out, method.holm([s["primary"]["wilcoxon_p"] for s in out])):
        s["primary"]["holm_p"] = p
    return out


def markdown(result: dict[str, Any]) -> str:
    ms, fg = grid.fmt_mean_std, grid.fmt_gain
    p = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    pair = lambda s: f"{s['teacher']} → {s['student']}"  # noqa: E731
    main = [
        [pair(s), len(s["seeds"]), fg(s["h1"]), fg(s["primary"]), p(s["primary"]["wilcoxon_p"]),
         p(s["primary"]["holm_p"]), "; ".join(s["reading"])]
        for s in result["summary"]
    ]  # fmt: skip
    arms = ["kd_gt", "kd_st", "a1", "a3", "bag", "ls_gt", "ls_st", "ls_ba", "ce", "st", "gt", "ba"]
    arm_rows = [[pair(s), *(ms(s["values"][a]) for a in arms)] for s in result["summary"]]
    scale_rows = [
        [
            pair(s),
            arm,
            *(ms(s["scales"][f"{arm}_{k}"]) for k in ("std_median", "train_std_median", "max_abs", "entropy")),
        ]
        for s in result["summary"]
        for arm in TEACHERS
    ]
    secondary = [
        [pair(s), name, fg(g), p(g["wilcoxon_p"]), g["n"]]
        for s in result["summary"]
        for name, g in s["secondary"].items()
    ]
    paper_cells = [r["paper_grid"] for r in result["cells"] if r.get("paper_grid")]
    reproduced = (
        f"The compare runs reproduce the paper grid's teachers and seed-0 students (top-1 of {', '.join(SHARED)}) "
        f"exactly in {sum(c['same'] for c in paper_cells)} of {len(paper_cells)} teacher seeds it has."
    )
    keys = sorted({k for r in result["cells"] for k in r if isinstance(r[k], float) and k not in method.COST_KEYS})
    seeds = [[pair(r), r["seed"], *(f"{r[k]:.2f}" for k in keys)] for r in result["cells"]]
    machine, cost = result["machine"], result["cost"]
    return "\n".join(
        [
            "# What the Generous Teacher teaches: knowledge or logit scale (benchmarks/scale.py)",
            "",
            "Plan: benchmarks/results/scale-plan.md (committed before these runs). Top-1 % on a 10,000-image test "
            f"split of synthetic100, last epoch. The unit is a teacher seed: the mean over its {STUDENT_SEEDS} student "
            "seeds of the difference between two arms' students (same initial weights and data order). KD is the "
            "authors' (CE 0.1 + KD 0.9 at T 20); a scaled arm multiplies its teacher's logits by the ratio of two "
            "teachers' median per-image logit std on the training split, before the temperature. 95% t-intervals "
            "over teacher seeds; p is the two-sided Wilcoxon signed-rank test, Holm-adjusted over the pairs run.",
            "",
            f"Machine: {machine['cpu']}, {machine['cores']} cores shared with other work, one thread per run, no "
            f"GPU; {cost['cpu_seconds'] / 3600:.2f} CPU-hours in all. Command: `{result['command']}`",
            "",
            "## Primary: KD ← GT at the ST's scale (A3) minus KD ← ST, beside H1 (KD ← GT minus KD ← ST)",
            "",
            markdown_table(["pair", "teacher seeds", "H1 [95% CI]", "A3 − ST [95% CI]", "Wilcoxon p", "Holm p",
                            "reading"], main),
            "## Every arm (top-1 %, mean ± std over teacher seeds)",
            "",
            "a1: KD ← ST scaled to the GT's std; a3: KD ← GT scaled to the ST's; bag: KD ← born-again scaled to the "
            "GT's; ls_*: LS-KD students; st, gt, ba: the teachers.",
            "",
            markdown_table(["pair", *arms], arm_rows),
            "## The teachers' logit scale (test split; training split's median std)",
            "",
            markdown_table(["pair", "teacher", "std median", "train std median", "max |logit|", "entropy at T 20"],
                           scale_rows),
            "## Secondary (unadjusted)",
            "",
            markdown_table(["pair", "difference", "mean [95% CI]", "Wilcoxon p", "n"], secondary),
            "## Every seed",
            "",
            reproduced,
            "",
            markdown_table(["pair", "seed", *keys], seeds),
        ]
    )  # fmt: skip


def store(args: Any, extra: dict[str, Any]) -> Callable[[Cell], Path] | None:
    """Where each finished cell's record is kept (committed, so the grid spans sessions); none with overrides."""
    return None if extra else lambda cell: method.cell_dir(cell, args.results / "scale-cells").with_suffix(".json")


def main(argv: Sequence[str] | None = None) -> None:
    parser = grid.grid_parser(
        __doc__.split("\n")[0], TEACHER_SEEDS, [PRIMARY], [PRIMARY], PAIRS[:1], "benchmarks/runs/scale"
    )
    args = parser.parse_args(argv)
    pairs, extra = grid.pairs_and_overrides(args)
    grid_cells = cells(pairs, args.seeds)
    runs = {c: cell_runs(c, args.runs, args.device, extra) for c in grid_cells}
    records = grid.run_grid(args, runs, lambda c: cell_record(c, runs[c]), store(args, extra))
    if records is None:
        return
    summary = summarize(records)
    result = {
        "benchmark": "scale",
        "command": grid.command_line(),
        "machine": grid.machine(),
        "seeds": args.seeds,
        "student_seeds": STUDENT_SEEDS,
        "big_test_per_class": method.BIG_TEST_PER_CLASS,
        "setting": asdict(SETTING),
        "extra_overrides": extra,
        "pairs": [{"teacher": t, "student": s} for t, s in pairs],
        "cells": records,
        "summary": summary,
        "cost": {key: sum(r[key] for r in records) for key in method.COST_KEYS},
    }
    grid.publish(args.results, "scale", result, markdown(result))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
