"""The paper's claim under its own protocol: students of the authors' Generous Teacher against students of the
Standard Teacher and of a born-again teacher.

    nice -n 19 python -m benchmarks.paper --jobs 2      # ~7.8 CPU-hours planned; re-run to resume, runs are kept

The plan, fixed before any run of this grid: benchmarks/results/paper-plan.md. Per (setting, pair, teacher seed)
a cell of `gtcompress distill` runs:
  compare   --compare with the authors' student KD (CE 0.1 + KD 0.9, T 20): ST, GT (the authors' loss, from
            scratch, the ST's schedule), born-again teacher (same, plain KD from the ST), KD students of each
            and the CE-only student (student seed 0)
  gt<j>/st<j>/ba<j>  KD students of student seed j = 1, 2 of the loaded GT, ST and born-again teacher
  pkd_gt/pkd_st  (secondary) students of the GT and the ST with the product's KD defaults (CE 1 + KD 1, T 4)
  ft/ct     (secondary) a GT fine-tuned from the ST for half its epochs with the authors' loss, and the
            continued teacher (the same run with the term's weight 0), each with a product-KD student
  k2        (secondary, one pair) a scratch GT whose term is scaled by k^2 instead of the ST's T^2, its student
Every model is also evaluated on the primary setting's 10,000-image test split. Writes
benchmarks/results/paper.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import grid, method
from benchmarks.method import MARGIN, STUDENT_SEEDS, Cell, Setting, paired_test, student_seed
from gtcompress.errors import UserError
from gtcompress.rundir import RunDir
from gtcompress.tables import markdown_table

AUTHORS_KD = {"student.kd.ce_weight": 0.1, "student.kd.kd_weight": 0.9, "student.kd.temperature": 20.0}
PRODUCT_KD = {"student.kd.ce_weight": 1.0, "student.kd.kd_weight": 1.0, "student.kd.temperature": 4.0}
FINE_TUNE = {"generous.init": "standard", "generous.train.epochs": 5}  # half the primary setting's 10 ST epochs
SETTINGS: dict[str, Setting] = {
    "synthetic100": Setting(
        "recipes/synthetic100.yaml",
        "CIFAR-100-like synthetic: 100 classes in 20 super-classes, 30 train / 20 test per class",
        AUTHORS_KD,
    ),
    "cifar100": Setting("recipes/paper_cifar100.yaml", "CIFAR-100, the authors' protocol, on a GPU (not run here)"),
}
PRIMARY = "synthetic100"
PAIRS = method.PAIRS
ABLATION_PAIR = method.ABLATION_PAIR
SECONDARY_SEEDS = method.SECONDARY_SEEDS
ARMS = {"gt": "generous_teacher", "st": "standard_teacher", "ba": "born_again_teacher"}  # the students' teachers


def cell_runs(cell: Cell, root: Path, device: str = "cpu", extra: dict[str, Any] | None = None) -> dict[str, grid.Task]:
    """Every run of a cell, in the order they must run; later runs load the compare run's teachers."""
    setting, d = SETTINGS[cell.setting], method.cell_dir(cell, root)
    overrides = {**setting.overrides, **(extra or {})}
    common = ("--recipe", setting.recipe, "--teacher", cell.teacher, "--student", cell.student, "--device", device)

    def task(name: str, seed: int, sets: dict[str, Any], stages: tuple[str, ...], *args: str) -> grid.Task:
        options = (*common, "--seed", str(seed), "--method", "kd", *args, *grid.sets({**overrides, **sets}))
        return grid.Task(d / name, options, stages)

    compare = task("compare", cell.seed, {}, method.compare_stages(setting.recipe, overrides), "--compare")
    ckpt = lambda stage: str(compare.out / f"{stage}.pt")  # noqa: E731
    loaded_st = ("--teacher-checkpoint", ckpt("standard_teacher"))

    def student_of(name: str, seed: int, stage: str, sets: dict[str, Any] | None = None) -> grid.Task:
        """A KD student of one finished teacher of the compare run, loaded as this run's GT."""
        return task(name, seed, {"generous.checkpoint": ckpt(stage), **(sets or {})}, method.LOADED_STAGES, *loaded_st)

    def variant(name: str, sets: dict[str, Any]) -> grid.Task:
        """A GT variant trained from the compare run's ST, and its KD student."""
        return task(name, cell.seed, sets, method.LOADED_STAGES, *loaded_st)

    runs = {"compare": compare}
    for j in range(1, STUDENT_SEEDS):
        runs.update({f"{arm}{j}": student_of(f"{arm}{j}", student_seed(cell.seed, j), s) for arm, s in ARMS.items()})
    if cell.setting == PRIMARY and cell.seed in SECONDARY_SEEDS:
        runs["pkd_gt"] = student_of("pkd_gt", cell.seed, "generous_teacher", PRODUCT_KD)
        runs["pkd_st"] = student_of("pkd_st", cell.seed, "standard_teacher", PRODUCT_KD)
        runs["ft"] = variant("ft", {**FINE_TUNE, **PRODUCT_KD})
        runs["ct"] = variant("ct", {**FINE_TUNE, **PRODUCT_KD, "generous.beta": 0.0})
        if (cell.teacher, cell.student) == ABLATION_PAIR:
            runs["k2"] = variant("k2", {"generous.scale": "k_squared"})
    return runs


def cells(settings: Sequence[str], pairs: Sequence[tuple[str, str]], seeds: Sequence[int]) -> list[Cell]:
    """Every (setting, pair, seed), seeds outermost within a setting: an interruption leaves whole seeds done."""
    return [Cell(s, t, st, seed) for s in settings for seed in seeds for t, st in pairs]


# Per-cell values: name -> (run, stage); student seeds j >= 1 are added from ARMS.
VALUES = {
    "st": ("compare", "standard_teacher"),
    "gt": ("compare", "generous_teacher"),
    "ba": ("compare", "born_again_teacher"),
    "ce": ("compare", "student_ce"),
    "kd_gt0": ("compare", "student"),
    "kd_st0": ("compare", "student_from_standard"),
    "kd_ba0": ("compare", "student_from_born_again"),
    "pkd_gt": ("pkd_gt", "student"),
    "pkd_st": ("pkd_st", "student"),
    "ft": ("ft", "generous_teacher"),
    "kd_ft": ("ft", "student"),
    "ct": ("ct", "generous_teacher"),
    "kd_ct": ("ct", "student"),
    "gt_k2": ("k2", "generous_teacher"),
    "kd_gt_k2": ("k2", "student"),
    **{f"kd_{arm}{j}": (f"{arm}{j}", "student") for j in range(1, STUDENT_SEEDS) for arm in ARMS},
}
TEACHERS = ("standard_teacher", "generous_teacher", "born_again_teacher")


def cell_record(cell: Cell, runs: dict[str, grid.Task], big_test: bool) -> dict[str, Any]:
    """One teacher seed's top-1 values (on the big test split where `big_test`), teacher seconds and cost."""
    present = {name: (r, s) for name, (r, s) in VALUES.items() if r in runs and s in runs[r].stages}
    top1 = lambda r, s: method.big_test_top1(runs[r], s) if big_test else grid.metrics(runs[r])[s]["top1"]  # noqa: E731
    record: dict[str, Any] = {**asdict(cell), **{name: top1(r, s) for name, (r, s) in present.items()}}
    for arm in ARMS:
        record[f"kd_{arm}"] = statistics.fmean(record[f"kd_{arm}{j}"] for j in range(STUDENT_SEEDS))
    m = grid.metrics(runs["compare"])
    record["small_test"] = {name: grid.metrics(runs[r])[s]["top1"] for name, (r, s) in present.items()}
    record["seconds"] = {s: m[s]["train_seconds"] for s in TEACHERS if s in m}
    record["generous"] = RunDir(runs["compare"].out).saved_config().generous.model_dump(mode="json")
    costs = [grid.run_cost(r) for r in runs.values()]
    return {**record, **{key: sum(c[key] for c in costs) for key in method.COST_KEYS}}


def unit(record: dict[str, Any], a: str, b: str) -> list[float]:
    """The per-student-seed differences KD <- a minus KD <- b of one teacher seed."""
    return [record[f"kd_{a}{j}"] - record[f"kd_{b}{j}"] for j in range(STUDENT_SEEDS)]


def reading(gain: dict[str, Any], control: str) -> str:
    """The plan's reading of a 95% interval of GT students minus `control` students."""
    return {
        None: "not enough seeds",
        "better": f"students of the GT are better than those of the {control}, by {gain['mean']:+.2f} points",
        "equivalent": f"students of the GT and of the {control} are equivalent (within ±{MARGIN:g})",
        "worse": f"students of the {control} are better, by {-gain['mean']:.2f} points",
        "undecided": f"not shown: not distinguishable from the {control}'s students at this precision",
    }[method.decision(gain)]


HYPOTHESES = {"h1": ("st", "ST"), "h2": ("ba", "born-again teacher")}  # primary: GT minus this arm, 3 student seeds
GAINS = {  # secondary, one value per teacher seed: name -> (minuend, subtrahend)
    "kd_ba_minus_st": ("kd_ba", "kd_st"),
    "kd_st_minus_ce": ("kd_st0", "ce"),
    "product_kd_gt_minus_st": ("pkd_gt", "pkd_st"),
    "fine_tuned_gt_minus_continued": ("kd_ft", "kd_ct"),
    "k2_scale_minus_authors": ("kd_gt_k2", "kd_gt0"),
    "gt_minus_st_teacher": ("gt", "st"),
    "ba_minus_st_teacher": ("ba", "st"),
    "fine_tuned_gt_minus_continued_teacher": ("ft", "ct"),
}


def summarize_group(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One (setting, pair): H1 and H2 over teacher seeds with their variance split, the secondary gains."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
    for name, (arm, label) in HYPOTHESES.items():
        diffs = [unit(r, "gt", arm) for r in rs]
        test = paired_test([statistics.fmean(d) for d in diffs])
        out[name] = {**test, "reading": reading(test, label), "variance": method.variance_components(diffs)}
    out["gains"] = {
        name: paired_test([r[a] - r[b] for r in rs if a in r and b in r])
        for name, (a, b) in GAINS.items()
        if any(a in r and b in r for r in rs)
    }
    names = sorted({k for r in rs for k in r if isinstance(r[k], float) and k not in method.COST_KEYS})
    out["values"] = {n: grid.summarize([r[n] for r in rs if n in r]) for n in names}
    seconds = [r["seconds"] for r in rs]
    out["gt_over_st_seconds"] = grid.summarize([s["generous_teacher"] / s["standard_teacher"] for s in seconds])
    return out


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (setting, pair) summaries; H1 and H2 Holm-adjusted over the pairs of each setting."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["setting"], r["teacher"], r["student"]), []).append(r)
    out = [
        {"setting": s, "teacher": t, "student": st, **summarize_group(sorted(rs, key=lambda r: r["seed"]))}
        for (s, t, st), rs in groups.items()
    ]
    for setting in {s["setting"] for s in out}:
        group = [s for s in out if s["setting"] == setting]
        for name in HYPOTHESES:
            for s, p in zip(group, method.holm([s[name]["wilcoxon_p"] for s in group])):
                s[name]["holm_p"] = p
    return out


def claim(summary: Sequence[dict[str, Any]]) -> str:
    """The plan's overall answer: shown only if every pair of the primary setting reads 'better' on H1 and H2."""
    primary = [s for s in summary if s["setting"] == PRIMARY]
    better = lambda s, h: method.decision(s[h]) == "better"  # noqa: E731
    if primary and all(better(s, "h1") and better(s, "h2") for s in primary):
        return "shown: students of the GT beat those of the ST and of the born-again teacher on both pairs"
    if primary and all(better(s, "h1") for s in primary):
        return "partly shown: the GT's students beat the ST's, but not beyond a born-again teacher's on both pairs"
    return "not shown at this precision"


def markdown(result: dict[str, Any]) -> str:
    ms, fg = grid.fmt_mean_std, grid.fmt_gain
    pair = lambda s: f"{s['teacher']} → {s['student']}"  # noqa: E731
    p = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    sd = lambda v: "–" if v is None else f"{v**0.5:.2f}"  # noqa: E731

    def hypothesis_rows(h: str, arm: str) -> list[list[Any]]:
        return [
            [
                s["setting"],
                pair(s),
                len(s["seeds"]),
                ms(s["values"]["kd_gt"]),
                ms(s["values"][f"kd_{arm}"]),
                fg(s[h]),
                p(s[h]["wilcoxon_p"]),
                p(s[h]["holm_p"]),
                sd(s[h]["variance"]["between"]),
                sd(s[h]["variance"]["within"]),
                s[h]["variance"]["teacher_seeds_needed"] or "–",
                s[h]["reading"],
            ]
            for s in result["summary"]
        ]

    cols = ["setting", "pair", "teacher seeds", "KD ← GT", "KD ← {}", "GT − {} [95% CI]", "Wilcoxon p", "Holm p"]
    cols += ["σ between", "σ within", f"seeds for ±{MARGIN:g}", "reading"]
    teachers = [
        [s["setting"], pair(s), *(ms(s["values"][k]) for k in ("st", "gt", "ba")), ms(s["gt_over_st_seconds"])]
        for s in result["summary"]
    ]
    secondary = [
        [s["setting"], pair(s), name, fg(g), p(g["wilcoxon_p"]), g["n"]]
        for s in result["summary"]
        for name, g in s["gains"].items()
    ]
    keys = sorted({k for r in result["cells"] for k in r if isinstance(r[k], float) and k not in method.COST_KEYS})
    seeds = [
        [r["setting"], pair(r), r["seed"], *(f"{r[k]:.2f}" if k in r else "–" for k in keys)] for r in result["cells"]
    ]
    machine, cost = result["machine"], result["cost"]
    return "\n".join(
        [
            "# The authors' Generous Teacher under their protocol (benchmarks/paper.py)",
            "",
            "Plan: benchmarks/results/paper-plan.md (committed before these runs). Top-1 % on the primary setting "
            f"on a {method.BIG_TEST_PER_CLASS}-per-class test split from the same generator, last epoch. The unit is "
            f"a teacher seed: the mean over its {STUDENT_SEEDS} student seeds of the difference between the arms' KD "
            "students (the authors' KD: CE 0.1 + KD 0.9 at T 20). 95% t-intervals over teacher seeds; p is the "
            "two-sided Wilcoxon signed-rank test, Holm-adjusted over the two pairs per hypothesis.",
            "",
            f"Machine: {machine['cpu']}, {machine['cores']} cores shared with other work, one thread per run, no GPU; "
            f"{cost['cpu_seconds'] / 3600:.2f} CPU-hours in all. Command: `{result['command']}`",
            "",
            f"**Answer: {result['claim']}.**",
            "",
            "## H1: KD students of the GT minus those of the ST",
            "",
            markdown_table([c.format("ST") for c in cols], hypothesis_rows("h1", "st")),
            "## H2: KD students of the GT minus those of the born-again teacher",
            "",
            markdown_table([c.format("born-again") for c in cols], hypothesis_rows("h2", "ba")),
            "## The teachers (top-1 %) and the GT's training time over the ST's",
            "",
            markdown_table(["setting", "pair", "ST", "GT", "born-again", "GT / ST seconds"], teachers),
            "## Secondary (unadjusted)",
            "",
            markdown_table(["setting", "pair", "difference", "mean [95% CI]", "Wilcoxon p", "n"], secondary),
            "## Every seed",
            "",
            markdown_table(["setting", "pair", "seed", *keys], seeds),
        ]
    )


def store(args: argparse.Namespace, extra: dict[str, Any]) -> Callable[[Cell], Path] | None:
    """Where each finished cell's record is kept (committed, so the grid spans sessions); none with overrides."""
    return None if extra else lambda cell: method.cell_dir(cell, args.results / "paper-cells").with_suffix(".json")


def main(argv: Sequence[str] | None = None) -> None:
    parser = grid.grid_parser(
        __doc__.split("\n")[0], method.TEACHER_SEEDS, SETTINGS, [PRIMARY], PAIRS, "benchmarks/runs/paper"
    )
    args = parser.parse_args(argv)
    pairs, extra = grid.pairs_and_overrides(args)
    grid_cells = cells(args.settings, pairs, args.seeds)
    runs = {c: cell_runs(c, args.runs, args.device, extra) for c in grid_cells}
    records = grid.run_grid(args, runs, lambda c: cell_record(c, runs[c], c.setting == PRIMARY), store(args, extra))
    if records is None:
        return
    summary = summarize(records)
    result = {
        "benchmark": "paper",
        "command": grid.command_line(),
        "machine": grid.machine(),
        "seeds": args.seeds,
        "student_seeds": STUDENT_SEEDS,
        "big_test_per_class": method.BIG_TEST_PER_CLASS,
        "settings": {name: asdict(SETTINGS[name]) for name in args.settings},
        "extra_overrides": extra,
        "pairs": [{"teacher": t, "student": s} for t, s in pairs],
        "cells": records,
        "summary": summary,
        "claim": claim(summary),
        "cost": {key: sum(r[key] for r in records) for key in method.COST_KEYS},
    }
    grid.publish(args.results, "paper", result, markdown(result))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
