"""Does the Generous Teacher teach better than the Standard Teacher it came from? Seeds x settings x pairs.

    nice -n 19 python benchmarks/method.py --jobs 2     # ~2.2 CPU-hours; re-run to resume, finished runs are kept

For every setting, teacher/student pair and seed, three `gtcompress distill` runs:
  kd       --compare --method kd: ST, GT, students from the GT, from the ST and CE-only (same seed, initial
           weights, data order, schedule)
  dkd      --compare --method dkd, loading that ST and GT: DKD students from each (its CE student repeats
           kd's exactly, a determinism check on every cell)
  scratch  --gt-init scratch for as many epochs as the ST, loading that ST: the costlier from-scratch GT and
           its KD student
The GT is the built-in default (k, beta, fine-tuned from the ST for half its epochs; chosen by
benchmarks/gt_sweep.py on held-out data). All seeds are reported; gains are paired per seed, with a 95%
t-interval over seeds.
Writes benchmarks/results/method.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grid  # noqa: E402

from gtcompress.config import load_config  # noqa: E402
from gtcompress.errors import UserError  # noqa: E402


@dataclass(frozen=True)
class Setting:
    recipe: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)


SETTINGS: dict[str, Setting] = {
    "digits": Setting("recipes/digits.yaml", "scikit-learn digits: 10 classes, 1437 train / 360 test, 32x32"),
    "digits-20%": Setting(
        "recipes/digits.yaml", "digits with a stratified 20% of the training split (287 images); 3x the epochs",
        {"data.train_fraction": 0.2, "teacher.train.epochs": 24, "generous.train.epochs": 12,
         "student.train.epochs": 45}),
    "synthetic": Setting("recipes/synthetic100.yaml",
                         "CIFAR-100-like synthetic: 100 classes in 20 super-classes, 30 train / 20 test per class"),
    "cifar100": Setting("recipes/cifar100_resnet50_mobilenetv3.yaml", "CIFAR-100, on a GPU (not run here)"),
}
CPU_SETTINGS = ("digits", "digits-20%", "synthetic")
PAIRS: tuple[tuple[str, str], ...] = (("resnet18", "mobilenetv3_small_100"), ("resnet10t", "mobilenetv3_small_050"))
# Per-seed values read from the runs: name -> (run, stage, metric).
VALUES = {
    "st": ("kd", "standard_teacher", "top1"), "gt": ("kd", "generous_teacher", "top1"),
    "ce": ("kd", "student_ce", "top1"), "kd_st": ("kd", "student_from_standard", "top1"),
    "kd_gt": ("kd", "student", "top1"), "dkd_st": ("dkd", "student_from_standard", "top1"),
    "dkd_gt": ("dkd", "student", "top1"), "gt_scratch": ("scratch", "generous_teacher", "top1"),
    "kd_gt_scratch": ("scratch", "student", "top1"), "ce_repeat": ("dkd", "student_ce", "top1"),
    "st_seconds": ("kd", "standard_teacher", "train_seconds"),
    "gt_seconds": ("kd", "generous_teacher", "train_seconds"),
    "gt_scratch_seconds": ("scratch", "generous_teacher", "train_seconds"),
}
# Paired per-seed differences (percentage points): name -> (minuend, subtrahend).
GAINS = {
    "kd_gt_minus_st": ("kd_gt", "kd_st"), "dkd_gt_minus_st": ("dkd_gt", "dkd_st"),
    "kd_gt_scratch_minus_st": ("kd_gt_scratch", "kd_st"), "kd_gt_minus_gt_scratch": ("kd_gt", "kd_gt_scratch"),
    "kd_st_minus_ce": ("kd_st", "ce"), "dkd_st_minus_ce": ("dkd_st", "ce"),
}


@dataclass(frozen=True)
class Cell:
    setting: str
    teacher: str
    student: str
    seed: int


def cells(settings: Sequence[str], pairs: Sequence[tuple[str, str]], seeds: Sequence[int]) -> list[Cell]:
    """Every (setting, pair, seed); seeds outermost, so an interrupted grid has whole seeds done."""
    return [Cell(s, t, st, seed) for seed in seeds for s in settings for t, st in pairs]


def cell_dir(cell: Cell, root: Path) -> Path:
    return root / cell.setting.replace("%", "pct") / f"{cell.teacher}-{cell.student}" / f"seed{cell.seed}"


def cell_runs(cell: Cell, root: Path, device: str = "cpu", extra: dict[str, Any] | None = None
              ) -> dict[str, grid.Run]:
    """The kd, dkd and scratch runs of a cell; dkd and scratch load the ST (and dkd the GT) that kd trained.

    `extra` recipe overrides apply to every run (e.g. precision=bf16 on a GPU)."""
    setting, d = SETTINGS[cell.setting], cell_dir(cell, root)
    overrides = {**setting.overrides, **(extra or {})}
    st_epochs = load_config(grid.REPO / setting.recipe, overrides).teacher.train.epochs
    common = ("--recipe", setting.recipe, "--teacher", cell.teacher, "--student", cell.student,
              "--seed", str(cell.seed), "--device", device)
    kd = grid.Run(d / "kd", (*common, "--method", "kd", "--compare", *grid.sets(overrides)))
    st, gt = str(kd.out / "standard_teacher.pt"), str(kd.out / "generous_teacher.pt")
    dkd = grid.Run(d / "dkd", (*common, "--method", "dkd", "--compare", "--teacher-checkpoint", st,
                               *grid.sets({**overrides, "generous.checkpoint": gt})))
    scratch = grid.Run(d / "scratch", (*common, "--method", "kd", "--teacher-checkpoint", st, "--gt-init", "scratch",
                                       *grid.sets({**overrides, "generous.train.epochs": st_epochs})),
                       stages=("standard_teacher", "generous_teacher", "student"))
    return {"kd": kd, "dkd": dkd, "scratch": scratch}


def cell_record(cell: Cell, runs: dict[str, grid.Run]) -> dict[str, Any]:
    """One seed's numbers of a cell, and what its runs cost."""
    m = {name: grid.metrics(run) for name, run in runs.items()}
    record = {**asdict(cell), **{name: m[run][stage][key] for name, (run, stage, key) in VALUES.items()}}
    gen = yaml.safe_load((runs["kd"].out / "config.yaml").read_text())["generous"]
    record["generous"] = {**{key: gen[key] for key in ("k", "beta", "warmup", "init")},
                          "epochs": gen["train"]["epochs"]}
    costs = [grid.run_cost(r) for r in runs.values()]
    return {**record, "cpu_seconds": sum(c["cpu_seconds"] for c in costs),
            "wall_seconds": sum(c["wall_seconds"] for c in costs)}


def shared_knobs(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The GT knobs every run used (its epochs, half the ST's, differ by setting); stale runs are an error."""
    knobs = {json.dumps({k: v for k, v in r["generous"].items() if k != "epochs"}, sort_keys=True) for r in records}
    epochs = {(r["setting"], r["generous"]["epochs"]) for r in records}
    if len(knobs) > 1 or len(epochs) > len({r["setting"] for r in records}):
        raise UserError(f"the runs used different GT knobs ({', '.join(sorted(knobs))}; epochs {sorted(epochs)})",
                        "remove the stale runs")
    return json.loads(knobs.pop())


def summarize_cells(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (setting, teacher, student): every value over seeds, and the paired GT-vs-ST gains."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["setting"], r["teacher"], r["student"]), []).append(r)
    out = []
    for (setting, teacher, student), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        values = {name: grid.summarize([r[name] for r in rs]) for name in VALUES}
        gains = {name: grid.summarize([r[a] - r[b] for r in rs]) for name, (a, b) in GAINS.items()}
        ratios = {"gt_over_st": grid.summarize([r["gt_seconds"] / r["st_seconds"] for r in rs]),
                  "gt_scratch_over_st": grid.summarize([r["gt_scratch_seconds"] / r["st_seconds"] for r in rs])}
        out.append({"setting": setting, "teacher": teacher, "student": student, "seeds": [r["seed"] for r in rs],
                    "values": values, "gains": gains, "time_ratios": ratios,
                    "ce_repeat_identical": all(r["ce"] == r["ce_repeat"] for r in rs)})
    return out


def markdown(result: dict[str, Any]) -> str:
    ms, fg = grid.fmt_mean_std, grid.fmt_gain
    summary = result["summary"]
    g = result["generous"]
    pair = lambda s: f"{s['teacher']} → {s['student']}"  # noqa: E731
    main_rows = [[s["setting"], pair(s), *(ms(s["values"][k]) for k in ("st", "gt", "ce", "kd_st", "kd_gt")),
                  fg(s["gains"]["kd_gt_minus_st"]), ms(s["values"]["dkd_st"]), ms(s["values"]["dkd_gt"]),
                  fg(s["gains"]["dkd_gt_minus_st"])] for s in summary]
    init_rows = [[s["setting"], pair(s), ms(s["values"]["gt"]), ms(s["values"]["gt_scratch"]),
                  ms(s["values"]["kd_gt"]), ms(s["values"]["kd_gt_scratch"]), fg(s["gains"]["kd_gt_scratch_minus_st"]),
                  fg(s["gains"]["kd_gt_minus_gt_scratch"]), f"{s['time_ratios']['gt_over_st']['mean']:.2f}",
                  f"{s['time_ratios']['gt_scratch_over_st']['mean']:.2f}"] for s in summary]
    seed_rows = [[r["setting"], f"{r['teacher']} → {r['student']}", r["seed"],
                  *(f"{r[k]:.2f}" for k in ("st", "gt", "ce", "kd_st", "kd_gt", "dkd_st", "dkd_gt", "gt_scratch",
                                            "kd_gt_scratch"))] for r in result["cells"]]
    machine, cost = result["machine"], result["cost"]
    return "\n".join([
        "# Does the Generous Teacher teach better? (benchmarks/method.py)", "",
        f"Top-1 % on the test split, mean ± std over seeds {', '.join(map(str, result['seeds']))}; "
        "gains are per-seed paired differences (percentage points) with a 95% t-interval over seeds "
        f"(n = {len(result['seeds'])}: the intervals are wide). GT: k = {g['k']:g}, β = {g['beta']:g}, "
        f"warm-up {g['warmup']:g}, init {g['init']} (fine-tuned from the ST for half its epochs); students: KD "
        "(T = 4) and DKD (α = 1, β = 8, T = 4), same schedule, seed and initial weights in every arm.", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores shared with other work, one thread per run, no GPU; "
        f"{cost['cpu_seconds'] / 3600:.2f} CPU-hours in all. Command: `{result['command']}`", "",
        "## Students from the GT vs from the ST", "",
        grid.markdown_table(["setting", "teacher → student", "ST", "GT", "CE only", "KD ← ST", "KD ← GT",
                             "KD: GT − ST [95% CI]", "DKD ← ST", "DKD ← GT", "DKD: GT − ST [95% CI]"], main_rows),
        "## The default GT (fine-tuned from the ST, half the epochs) vs a GT from scratch (as many epochs as the ST)",
        "", "Times are training wall seconds relative to the ST's in the same kd run (the scratch GT's run is a "
        "separate process) on a shared machine.", "",
        grid.markdown_table(["setting", "teacher → student", "GT", "GT-scratch", "KD ← GT", "KD ← GT-scratch",
                             "KD: GT-scratch − ST [95% CI]", "KD: GT − GT-scratch [95% CI]", "GT time / ST time",
                             "GT-scratch time / ST time"], init_rows),
        "## Every seed", "",
        grid.markdown_table(["setting", "teacher → student", "seed", "ST", "GT", "CE only", "KD ← ST", "KD ← GT",
                             "DKD ← ST", "DKD ← GT", "GT-scratch", "KD ← GT-scratch"], seed_rows),
        "Determinism: the CE-only student is trained twice per cell (kd and dkd runs) with the same seed; "
        f"identical in every cell: {all(s['ce_repeat_identical'] for s in summary)}.", "",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="+", default=list(CPU_SETTINGS), choices=list(SETTINGS))
    p.add_argument("--pairs", nargs="+", default=[f"{t}:{s}" for t, s in PAIRS], help="TEACHER:STUDENT ...")
    p.add_argument("--jobs", type=int, default=1, help="cells at once (one CPU thread each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override for every run, e.g. precision=bf16")
    p.add_argument("--runs", type=Path, default=grid.REPO / "benchmarks/runs/method")
    p.add_argument("--results", type=Path, default=grid.REPO / "benchmarks/results")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--report-only", action="store_true", help="only summarise finished runs")
    args = p.parse_args(argv)

    pairs = [tuple(x.split(":", 1)) for x in args.pairs]
    extra = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.extra)}
    grid_cells = cells(args.settings, pairs, args.seeds)
    runs = {c: cell_runs(c, args.runs, args.device, extra) for c in grid_cells}
    if args.dry_run:
        for group in runs.values():
            for run in group.values():
                print(" ".join(grid.distill_command(run)), f"  [{grid.run_state(run)}]")
        return
    if not args.report_only:
        grid.run_groups([list(r.values()) for r in runs.values()], args.jobs, args.threads)
    missing = [str(r.out) for group in runs.values() for r in group.values() if grid.run_state(r) != "done"]
    if missing:
        sys.exit(f"{len(missing)} run(s) unfinished, e.g. {missing[0]}; run without --report-only to finish them")
    records = [cell_record(c, runs[c]) for c in grid_cells]
    knobs = shared_knobs(records)
    result = {
        "benchmark": "method", "command": grid.command_line(), "machine": grid.machine(), "seeds": args.seeds,
        "settings": {name: asdict(SETTINGS[name]) for name in args.settings}, "extra_overrides": extra,
        "pairs": [{"teacher": t, "student": s} for t, s in pairs],
        "generous": knobs,
        "cells": records, "summary": summarize_cells(records),
        "cost": {key: sum(r[key] for r in records) for key in ("cpu_seconds", "wall_seconds")},
    }
    grid.publish(args.results, "method", result, markdown(result))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
