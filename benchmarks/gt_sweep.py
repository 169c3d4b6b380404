"""Sweep of the Generous Teacher's knobs on one setting, and the defaults it chooses.

    nice -n 19 python -m benchmarks.gt_sweep --jobs 2     # ~1.5 CPU-hours; re-run to resume, finished runs are kept

Grid: k in {1, 2, 4} x beta in {0.5, 1, 2, 4} x init in {scratch, standard} (standard: fine-tuned from the
ST for half the GT epochs), warm-up fixed at 0.2, on recipes/synthetic100.yaml with resnet18 ->
mobilenetv3_small_100 and KD students. Objective: the top-1 of the student distilled from each GT.
Every cell loads one Standard Teacher, trained in the base run (k=2, beta=1, scratch, with --compare,
which also gives the student-from-ST and CE-only references). The sweep runs on a held-out data seed
(data.synthetic.seed=1) and run seed 100, so that benchmarks/method.py evaluates the chosen defaults on
data and seeds they were not chosen on. Writes benchmarks/results/gt_sweep.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import grid
from gtcompress.config import load_config
from gtcompress.errors import UserError
from gtcompress.stages import run_stages
from gtcompress.tables import markdown_table

RECIPE = "recipes/synthetic100.yaml"
TEACHER, STUDENT = "resnet18", "mobilenetv3_small_100"
KS = (1.0, 2.0, 4.0)
BETAS = (0.5, 1.0, 2.0, 4.0)
INITS = ("scratch", "standard")
BASE = (2.0, 1.0, "scratch")
DATA_SEED = 1
WARMUP = 0.2


@dataclass(frozen=True)
class SweepCell:
    k: float
    beta: float
    init: str
    seed: int

    @property
    def is_base(self) -> bool:
        return (self.k, self.beta, self.init) == BASE


def sweep_cells(seeds: Sequence[int]) -> list[SweepCell]:
    """Every (k, beta, init) for every seed, the base cell of each seed first."""
    cells = [SweepCell(k, b, i, s) for s in seeds for i, k, b in itertools.product(INITS, KS, BETAS)]
    return sorted(cells, key=lambda c: not c.is_base)


def cell_run(cell: SweepCell, root: Path, gt_epochs: int, device: str = "cpu") -> grid.Task:
    """The distill run of one cell; all but the base cell load the base cell's Standard Teacher."""
    out = root / f"seed{cell.seed}" / f"k{cell.k:g}-b{cell.beta:g}-{cell.init}"
    overrides = {
        "data.synthetic.seed": DATA_SEED,
        "generous.k": cell.k,
        "generous.beta": cell.beta,
        "generous.init": cell.init,
        "generous.warmup": WARMUP,
        "generous.scale": "k_squared",  # the loss this sweep was run with (before the authors' scale)
        "generous.train.epochs": gt_epochs if cell.init == "scratch" else gt_epochs // 2,
    }
    common = (
        "--recipe",
        RECIPE,
        "--teacher",
        TEACHER,
        "--student",
        STUDENT,
        "--seed",
        str(cell.seed),
        "--device",
        device,
        "--method",
        "kd",
        *grid.sets(overrides),
    )
    if cell.is_base:
        return grid.Task(
            out,
            (*common, "--compare"),
            tuple(run_stages(load_config(grid.REPO / RECIPE, {**overrides, "compare": True}))),
        )
    base = cell_run(SweepCell(*BASE, cell.seed), root, gt_epochs, device)
    return grid.Task(
        out,
        (*common, "--teacher-checkpoint", str(base.out / "standard_teacher.pt")),
        stages=("standard_teacher", "generous_teacher", "student"),
    )


def cell_record(cell: SweepCell, run: grid.Task, base: grid.Task) -> dict[str, Any]:
    m, b = grid.metrics(run), grid.metrics(base)
    gt = m["generous_teacher"]
    return {
        **asdict(cell),
        "gt_epochs": gt["epochs"],
        "gt_top1": gt["top1"],
        "student_top1": m["student"]["top1"],
        "gt_seconds": gt["train_seconds"],
        "gt_over_st_time": gt["train_seconds"] / b["standard_teacher"]["train_seconds"],
        "cpu_seconds": grid.run_cost(run)["cpu_seconds"],
    }


def references(base: grid.Task, seed: int) -> dict[str, Any]:
    """What every GT is measured against: the ST, the student distilled from it, the CE-only student."""
    m = grid.metrics(base)
    return {
        "seed": seed,
        "st_top1": m["standard_teacher"]["top1"],
        "st_seconds": m["standard_teacher"]["train_seconds"],
        "student_from_st_top1": m["student_from_standard"]["top1"],
        "student_ce_top1": m["student_ce"]["top1"],
    }


def choose_defaults(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The rule fixed before the sweep ran: (k, beta) with the best mean student top-1 over both inits and all
    seeds; init `standard` only if its mean over all its cells beats scratch's (it is also cheaper)."""
    by_kb: dict[tuple[float, float], list[float]] = defaultdict(list)
    by_init: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by_kb[(r["k"], r["beta"])].append(r["student_top1"])
        by_init[r["init"]].append(r["student_top1"])
    means = {kb: statistics.fmean(v) for kb, v in by_kb.items()}
    k, beta = max(means, key=means.get)
    init_means = {i: statistics.fmean(v) for i, v in by_init.items()}
    init = "standard" if init_means.get("standard", float("-inf")) > init_means["scratch"] else "scratch"
    return {
        "k": k,
        "beta": beta,
        "init": init,
        "mean_student_top1_by_k_beta": [{"k": kb[0], "beta": kb[1], "mean": v} for kb, v in means.items()],
        "mean_student_top1_by_init": init_means,
    }


def markdown(result: dict[str, Any]) -> str:
    cells, refs, choice = result["cells"], result["references"], result["choice"]
    seeds = result["seeds"]
    lines = [
        "# Generous Teacher sweep",
        "",
        f"Setting: `{RECIPE}` with data seed {DATA_SEED} (held out from benchmarks/method.py), "
        f"{TEACHER} -> {STUDENT}, KD students, run seed(s) {', '.join(map(str, seeds))}"
        f"{' (one seed: differences below the seed-to-seed spread are noise)' if len(seeds) == 1 else ''}. "
        f"GT warm-up {WARMUP}; `standard` = fine-tuned from the ST for half the epochs.",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores (shared), 1 thread per run, "
        f"{result['cost']['cpu_seconds'] / 3600:.2f} CPU-hours in all.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    for init in INITS:
        for key, title in (("student_top1", "student <- GT top-1 %"), ("gt_top1", "GT top-1 %")):
            rows = []
            for k in KS:
                row = [f"k={k:g}"]
                for beta in BETAS:
                    vals = [c[key] for c in cells if (c["k"], c["beta"], c["init"]) == (k, beta, init)]
                    row.append(f"{statistics.fmean(vals):.2f}" if vals else "-")
                rows.append(row)
            lines += [f"## {title}, init {init}", "", markdown_table(["", *(f"β={b:g}" for b in BETAS)], rows)]
    ref_rows = [
        [r["seed"], f"{r['st_top1']:.2f}", f"{r['student_from_st_top1']:.2f}", f"{r['student_ce_top1']:.2f}"]
        for r in refs
    ]
    lines += [
        "## References (base run)",
        "",
        markdown_table(["seed", "ST top-1 %", "student <- ST %", "CE-only student %"], ref_rows),
    ]
    times = defaultdict(list)
    for c in cells:
        times[c["init"]].append(c["gt_over_st_time"])
    lines += [
        "## Cost",
        "",
        markdown_table(
            ["GT init", "GT epochs", "GT train time / ST train time (mean)"],
            [
                [i, next(c["gt_epochs"] for c in cells if c["init"] == i), f"{statistics.fmean(times[i]):.2f}"]
                for i in INITS
                if times[i]
            ],
        ),
    ]
    lines += [
        "## Chosen defaults",
        "",
        f"k = {choice['k']:g}, beta = {choice['beta']:g}, init = {choice['init']} "
        "(rule: best mean student top-1 over both inits; `standard` only if its mean beats scratch's).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[100])
    p.add_argument("--jobs", type=int, default=1, help="runs at once (one CPU thread each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=Path, default=grid.REPO / "benchmarks/runs/gt_sweep")
    p.add_argument("--results", type=Path, default=grid.REPO / "benchmarks/results")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--report-only", action="store_true", help="only summarise finished runs")
    args = p.parse_args(argv)

    gt_epochs = load_config(grid.REPO / RECIPE).generous.train.epochs
    cells = sweep_cells(args.seeds)
    runs = {c: cell_run(c, args.runs, gt_epochs, args.device) for c in cells}
    if args.dry_run:
        for run in runs.values():
            print(" ".join(grid.distill_command(run)), f"  [{grid.run_state(run)}]")
        return
    if not args.report_only:
        bases = [[runs[c]] for c in cells if c.is_base]
        grid.run_groups(bases, args.jobs, args.threads)
        grid.run_groups([[runs[c]] for c in cells if not c.is_base], args.jobs, args.threads)
    missing = [str(r.out) for r in runs.values() if grid.run_state(r) != "done"]
    if missing:
        sys.exit(f"{len(missing)} run(s) unfinished, e.g. {missing[0]}; run without --report-only to finish them")
    base_of = {s: runs[SweepCell(*BASE, s)] for s in args.seeds}
    records = [cell_record(c, runs[c], base_of[c.seed]) for c in cells]
    costs = [grid.run_cost(r) for r in runs.values()]
    result = {
        "benchmark": "gt_sweep",
        "command": grid.command_line(),
        "machine": grid.machine(),
        "setting": {
            "recipe": RECIPE,
            "data_seed": DATA_SEED,
            "teacher": TEACHER,
            "student": STUDENT,
            "method": "kd",
            "gt_epochs": {"scratch": gt_epochs, "standard": gt_epochs // 2},
            "warmup": WARMUP,
        },
        "seeds": args.seeds,
        "cells": records,
        "references": [references(base_of[s], s) for s in args.seeds],
        "choice": choose_defaults(records),
        "cost": {key: sum(c[key] for c in costs) for key in ("cpu_seconds", "wall_seconds")},
    }
    grid.publish(args.results, "gt_sweep", result, markdown(result))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
