"""Is it the generous knowledge or the extra epochs? Students of the GT, the continued teacher and the ST.

    nice -n 19 python -m benchmarks.method --jobs 2     # 3.96 CPU-hours measured; re-run to resume, runs are kept

The plan, fixed before any run of this grid: benchmarks/results/method-plan.md. Per (setting, pair, teacher
seed) a cell of `gtcompress distill` runs:
  compare   --compare --method kd: ST, GT, continued teacher (the ST fine-tuned with CE alone for the GT's
            epochs, seed and schedule), KD students from each, and the CE-only student (student seed 0)
  gt<j>/ct<j>  (primary setting) KD students of student seed j = 1.. from the loaded GT and continued teacher
  dkd       (secondary) --compare --method dkd from the loaded ST and GT; its CE student repeats compare's
  full/fixed_t  (ablation) a GT distilling all classes, or at a fixed T = 4, and its KD student
On the primary setting every model is also evaluated on a larger test split drawn from the same generator.
Writes benchmarks/results/method.{json,md}.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from benchmarks import grid
from gtcompress.config import DataConfig, RunConfig, load_config
from gtcompress.errors import UserError
from gtcompress.files import write_json
from gtcompress.rundir import RunDir, read_json
from gtcompress.stages import run_stages
from gtcompress.tables import markdown_table


@dataclass(frozen=True)
class Setting:
    recipe: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] | None = None  # the only teacher seeds this setting runs; None: every seed given


SECONDARY_SEEDS = tuple(range(5))  # DKD, the ablation and the low-data setting
# The GT this grid tested (the defaults before the authors' loss): fine-tuned for half the ST's epochs, k^2-scaled.
FINE_TUNED_VARIANT = {
    "generous.init": "standard",
    "generous.beta": 2.0,
    "generous.warmup": 0.2,
    "generous.scale": "k_squared",
}
SETTINGS: dict[str, Setting] = {
    "synthetic100": Setting(
        "recipes/synthetic100.yaml",
        "CIFAR-100-like synthetic: 100 classes in 20 super-classes, 30 train / 20 test per class",
        {**FINE_TUNED_VARIANT, "generous.train.epochs": 5},
    ),
    "digits-20%": Setting(
        "recipes/digits.yaml",
        "digits with a stratified 20% of the training split (287 images); 3x the epochs",
        {
            **FINE_TUNED_VARIANT,
            "data.train_fraction": 0.2,
            "teacher.train.epochs": 24,
            "generous.train.epochs": 12,
            "student.train.epochs": 45,
        },
        SECONDARY_SEEDS,
    ),
    "cifar100": Setting(
        "recipes/cifar100_resnet50_mobilenetv3.yaml",
        "CIFAR-100, on a GPU (not run here)",
        {**FINE_TUNED_VARIANT, "generous.train.epochs": 120},
    ),
}
PRIMARY = "synthetic100"
PAIRS: tuple[tuple[str, str], ...] = (("resnet18", "mobilenetv3_small_100"), ("resnet10t", "mobilenetv3_small_050"))
ABLATION_PAIR = PAIRS[1]
TEACHER_SEEDS = tuple(range(10))
STUDENT_SEEDS = 3  # per teacher seed on the primary setting; their mean is the unit of analysis
BIG_TEST_PER_CLASS = 100  # the larger test split of the primary setting: 10,000 images (the recipe's: 2,000)
FIXED_T = 4.0  # the ablation's fixed temperature: the KD default
COST_KEYS = ("cpu_seconds", "wall_seconds")
MARGIN = 0.5  # points: the effect size the plan aims to resolve, and the equivalence margin


def _trained(cfg: RunConfig) -> tuple[str, ...]:
    return tuple(run_stages(cfg))


def compare_stages(recipe: str, overrides: dict[str, Any]) -> tuple[str, ...]:
    """A setting's --compare stages: without the continued arm where its GT has no extra epochs (from scratch)."""
    return _trained(load_config(grid.REPO / recipe, {**overrides, "compare": True}))


LOADED_STAGES = _trained(RunConfig())
DKD_STAGES = _trained(RunConfig(compare=True, generous={"checkpoint": "gt.pt"}))  # a loaded GT: no continued arm


@dataclass(frozen=True)
class Cell:
    setting: str
    teacher: str
    student: str
    seed: int


def student_seed(teacher_seed: int, j: int) -> int:
    """Run seed of student seed j of a teacher seed (j = 0 is the compare run's own seed)."""
    return teacher_seed + 1000 * j


def cell_dir(cell: Cell, root: Path) -> Path:
    return root / cell.setting.replace("%", "pct") / f"{cell.teacher}-{cell.student}" / f"seed{cell.seed}"


def cell_runs(cell: Cell, root: Path, device: str = "cpu", extra: dict[str, Any] | None = None) -> dict[str, grid.Task]:
    """Every run of a cell, in the order they must run; later runs load the compare run's teachers."""
    setting, d = SETTINGS[cell.setting], cell_dir(cell, root)
    overrides = {**setting.overrides, **(extra or {})}
    common = ("--recipe", setting.recipe, "--teacher", cell.teacher, "--student", cell.student, "--device", device)
    compare = grid.Task(
        d / "compare",
        (*common, "--seed", str(cell.seed), "--method", "kd", "--compare", *grid.sets(overrides)),
        compare_stages(setting.recipe, overrides),
    )
    st, gt, ct = (str(compare.out / f"{s}.pt") for s in ("standard_teacher", "generous_teacher", "continued_teacher"))

    def loaded(
        name: str, generous: str, seed: int, method: str, stages: tuple[str, ...] = LOADED_STAGES, *args: str
    ) -> grid.Task:
        return grid.Task(
            d / name,
            (
                *common,
                "--seed",
                str(seed),
                "--method",
                method,
                "--teacher-checkpoint",
                st,
                *args,
                *grid.sets({**overrides, "generous.checkpoint": generous}),
            ),
            stages,
        )

    def ablation(name: str, **sets: Any) -> grid.Task:
        return grid.Task(
            d / name,
            (
                *common,
                "--seed",
                str(cell.seed),
                "--method",
                "kd",
                "--teacher-checkpoint",
                st,
                *grid.sets({**overrides, **sets}),
            ),
            LOADED_STAGES,
        )

    runs = {"compare": compare}
    if cell.setting == PRIMARY:
        for j in range(1, STUDENT_SEEDS):
            seed = student_seed(cell.seed, j)
            runs[f"gt{j}"] = loaded(f"gt{j}", gt, seed, "kd")
            runs[f"ct{j}"] = loaded(f"ct{j}", ct, seed, "kd")
        if cell.seed in SECONDARY_SEEDS:
            runs["dkd"] = loaded("dkd", gt, cell.seed, "dkd", DKD_STAGES, "--compare")
        if cell.seed in SECONDARY_SEEDS and (cell.teacher, cell.student) == ABLATION_PAIR:
            runs["full"] = ablation("full", **{"generous.classes": "all"})
            runs["fixed_t"] = ablation("fixed_t", **{"generous.temperature": FIXED_T})
    return runs


def cells(settings: Sequence[str], pairs: Sequence[tuple[str, str]], seeds: Sequence[int]) -> list[Cell]:
    """Every (setting, pair, seed), settings first (the primary one leads), then seeds, so that an
    interruption leaves whole teacher seeds of the primary setting done. The low-data setting takes the
    secondary seeds only (the plan); CIFAR-100 on a GPU takes every seed given."""
    return [
        Cell(s, t, st, seed)
        for s in settings
        for seed in seeds
        for t, st in pairs
        if SETTINGS[s].seeds is None or seed in SETTINGS[s].seeds
    ]


@functools.lru_cache(maxsize=4)
def _big_test(data_json: str, arch_key: str) -> Any:
    from gtcompress.evaluate import load_eval_data
    from gtcompress.models import ModelSpec

    data = DataConfig.model_validate_json(data_json)
    spec = ModelSpec(*json.loads(arch_key))
    return load_eval_data(data, spec)


_EVAL_LOCK = threading.Lock()


def big_test_top1(run: grid.Task, stage: str) -> float:
    """Top-1 (%) of a run's finished stage on the larger test split, cached in <run>/big_test.json."""
    from gtcompress.backends import BACKENDS
    from gtcompress.evaluate import predict
    from gtcompress.models import load_model

    cache_path = run.out / "big_test.json"
    cache = read_json(cache_path) if cache_path.exists() else {}
    if stage not in cache:
        with _EVAL_LOCK:  # one evaluation at a time: each holds the 20,000 images
            model, spec, _ = load_model(run.out / f"{stage}.pt")
            cfg = RunDir(run.out).saved_config().data.model_dump(mode="json")
            cfg["synthetic"]["val_per_class"] = BIG_TEST_PER_CLASS
            key = json.dumps(
                [spec.arch, spec.num_classes, spec.img_size, list(spec.mean), list(spec.std), list(spec.class_names)]
            )
            data = _big_test(json.dumps(cfg), key)
            logits = predict(BACKENDS["torch"].open(model, "cpu", "fp32"), data, 256)
            cache[stage] = float(100 * (logits.argmax(1) == data.labels).mean())
            write_json(cache_path, cache)
    return cache[stage]


# Per-cell values: name -> (run, stage). Student seeds j >= 1 are added by `_student_values`.
VALUES = {
    "st": ("compare", "standard_teacher"),
    "gt": ("compare", "generous_teacher"),
    "ct": ("compare", "continued_teacher"),
    "ce": ("compare", "student_ce"),
    "kd_st": ("compare", "student_from_standard"),
    "kd_gt0": ("compare", "student"),
    "kd_ct0": ("compare", "student_from_continued"),
    "dkd_gt": ("dkd", "student"),
    "dkd_st": ("dkd", "student_from_standard"),
    "ce_repeat": ("dkd", "student_ce"),
    "gt_full": ("full", "generous_teacher"),
    "kd_gt_full": ("full", "student"),
    "gt_fixed_t": ("fixed_t", "generous_teacher"),
    "kd_gt_fixed_t": ("fixed_t", "student"),
}


def _student_values() -> dict[str, tuple[str, str]]:
    return {f"kd_{arm}{j}": (f"{arm}{j}", "student") for j in range(1, STUDENT_SEEDS) for arm in ("gt", "ct")}


def cell_record(cell: Cell, runs: dict[str, grid.Task], big_test: bool) -> dict[str, Any]:
    """One teacher seed's numbers (top-1 on the big test split where `big_test`), and what its runs cost."""
    values = {**VALUES, **_student_values()}
    present = {name: (r, s) for name, (r, s) in values.items() if r in runs and s in runs[r].stages}
    record: dict[str, Any] = {**asdict(cell)}
    for name, (run, stage) in present.items():
        record[name] = big_test_top1(runs[run], stage) if big_test else grid.metrics(runs[run])[stage]["top1"]
    m = grid.metrics(runs["compare"])
    record["small_test"] = {name: grid.metrics(runs[r])[s]["top1"] for name, (r, s) in present.items()}
    teachers = ("standard_teacher", "generous_teacher", "continued_teacher")
    record["seconds"] = {s: m[s]["train_seconds"] for s in teachers if s in runs["compare"].stages}
    gen = RunDir(runs["compare"].out).saved_config().generous
    record["generous"] = {**gen.model_dump(include={"k", "beta", "warmup", "init"}), "epochs": gen.train.epochs}
    costs = [grid.run_cost(r) for r in runs.values()]
    return {
        **record,
        "cpu_seconds": sum(c["cpu_seconds"] for c in costs),
        "wall_seconds": sum(c["wall_seconds"] for c in costs),
    }


def unit_difference(record: dict[str, Any], a: str, b: str) -> tuple[float, list[float]]:
    """The mean over student seeds of KD <- a minus KD <- b, and the per-student-seed differences."""
    diffs = [record[f"kd_{a}{j}"] - record[f"kd_{b}{j}"] for j in range(STUDENT_SEEDS) if f"kd_{a}{j}" in record]
    return statistics.fmean(diffs), diffs


def variance_components(per_seed: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """One-way random-effects split of the paired difference's variance: between teacher seeds and within
    (student seed plus test-split noise), and the teacher seeds needed for a 95% half-width of MARGIN."""
    m = min(len(d) for d in per_seed)
    if len(per_seed) < 2 or m < 2:
        return {"between": None, "within": None, "teacher_seeds_needed": None}
    within = statistics.fmean(statistics.variance(d[:m]) for d in per_seed)
    unit = statistics.variance([statistics.fmean(d[:m]) for d in per_seed])
    between = max(0.0, unit - within / m)
    n = 2
    while stats.t.ppf(0.975, n - 1) * math.sqrt(unit / n) > MARGIN and n < 10_000:
        n += 1
    return {"between": between, "within": within, "teacher_seeds_needed": n}


def paired_test(diffs: Sequence[float]) -> dict[str, Any]:
    """Mean, 95% t-interval and two-sided Wilcoxon signed-rank p of paired differences."""
    out = grid.summarize(diffs)
    nonzero = [d for d in diffs if d != 0]
    out["wilcoxon_p"] = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) >= 2 else None
    return out


def verdict(gain: dict[str, Any]) -> str:
    """The plan's reading of a GT - continued interval."""
    return {
        None: "not enough seeds",
        "better": f"the GT's students are better beyond its extra epochs, by {gain['mean']:+.2f} points",
        "equivalent": f"the continued teacher matches the GT (within ±{MARGIN:g}): the gain is the extra epochs'",
        "worse": f"the continued teacher's students are better, by {-gain['mean']:.2f} points",
        "undecided": "not distinguishable from the extra training at this precision",
    }[decision(gain)]


def decision(gain: dict[str, Any]) -> str | None:
    """The pre-registered rule (both plans) on a 95% interval and the MARGIN: 'better' (lower end > 0),
    'equivalent' (all within ±MARGIN), 'worse' (upper end < 0), else 'undecided'; None without an interval."""
    if gain["ci95"] is None:
        return None
    lo, hi = gain["ci95"]
    if lo > 0:
        return "better"
    if -MARGIN <= lo and hi <= MARGIN:
        return "equivalent"
    return "worse" if hi < 0 else "undecided"


GAINS = {  # secondary, paired per teacher seed: name -> (minuend, subtrahend)
    "kd_gt_minus_st": ("kd_gt0", "kd_st"),
    "kd_ct_minus_st": ("kd_ct0", "kd_st"),
    "dkd_gt_minus_st": ("dkd_gt", "dkd_st"),
    "kd_st_minus_ce": ("kd_st", "ce"),
    "full_minus_gt": ("kd_gt_full", "kd_gt0"),
    "fixed_t_minus_gt": ("kd_gt_fixed_t", "kd_gt0"),
    "gt_minus_ct_teacher": ("gt", "ct"),
}


def continued_arm(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The primary test over one (setting, pair)'s teacher seeds: GT - continued, its variance split, each arm's
    students. None where the setting has no continued arm (a GT from scratch has no extra epochs)."""
    if not all("kd_ct0" in r for r in rs):
        return {"gt_minus_continued": None, "variance": None, "students": None}
    units = [unit_difference(r, "gt", "ct") for r in rs]
    primary = paired_test([u for u, _ in units])
    primary["verdict"] = verdict(primary)
    mean_student = lambda r, arm: statistics.fmean(  # noqa: E731
        r[f"kd_{arm}{j}"] for j in range(STUDENT_SEEDS) if f"kd_{arm}{j}" in r
    )
    return {
        "gt_minus_continued": primary,
        "variance": variance_components([d for _, d in units]),
        "students": {arm: grid.summarize([mean_student(r, arm) for r in rs]) for arm in ("gt", "ct")},
    }


def summarize_cells(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (setting, pair): the primary GT - continued test, the secondary gains, every value over seeds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["setting"], r["teacher"], r["student"]), []).append(r)
    out = []
    for (setting, teacher, student), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        names = sorted({k for r in rs for k in r if isinstance(r[k], float) and k not in COST_KEYS})
        gains = {
            name: paired_test([r[a] - r[b] for r in rs if a in r and b in r])
            for name, (a, b) in GAINS.items()
            if any(a in r and b in r for r in rs)
        }
        repeats = [r for r in rs if "ce_repeat" in r]
        out.append(
            {
                "setting": setting,
                "teacher": teacher,
                "student": student,
                "seeds": [r["seed"] for r in rs],
                **continued_arm(rs),
                "gains": gains,
                "values": {n: grid.summarize([r[n] for r in rs if n in r]) for n in names},
                "ce_repeat_identical": all(r["small_test"]["ce"] == r["small_test"]["ce_repeat"] for r in repeats)
                if repeats
                else None,
            }
        )
    return out


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment over the primary tests (one per pair)."""
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        adjusted[i] = running
    return adjusted


def shared_knobs(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The GT knobs every run used (its epochs, half the ST's, differ by setting); stale runs are an error."""
    knobs = {json.dumps({k: v for k, v in r["generous"].items() if k != "epochs"}, sort_keys=True) for r in records}
    epochs = {(r["setting"], r["generous"]["epochs"]) for r in records}
    if len(knobs) > 1 or len(epochs) > len({r["setting"] for r in records}):
        raise UserError(
            f"the runs used different GT knobs ({', '.join(sorted(knobs))}; epochs {sorted(epochs)})",
            "remove the stale runs",
        )
    return json.loads(knobs.pop())


def markdown(result: dict[str, Any]) -> str:
    ms, fg = grid.fmt_mean_std, grid.fmt_gain
    pair = lambda s: f"{s['teacher']} → {s['student']}"  # noqa: E731
    p = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    tested = [s for s in result["summary"] if s["gt_minus_continued"] is not None]
    untested = sorted({s["setting"] for s in result["summary"]} - {s["setting"] for s in tested})
    primary = [
        [
            s["setting"],
            pair(s),
            len(s["seeds"]),
            ms(s["values"]["gt"]),
            ms(s["values"]["ct"]),
            ms(s["students"]["gt"]),
            ms(s["students"]["ct"]),
            fg(s["gt_minus_continued"]),
            p(s["gt_minus_continued"]["wilcoxon_p"]),
            p(s["holm_p"]),
            s["gt_minus_continued"]["verdict"],
        ]
        for s in tested
    ]
    variance = [
        [
            s["setting"],
            pair(s),
            *(
                f"{math.sqrt(v):.2f}" if v is not None else "–"
                for v in (s["variance"]["between"], s["variance"]["within"])
            ),
            s["variance"]["teacher_seeds_needed"] or "–",
        ]
        for s in tested
    ]
    secondary = [
        [s["setting"], pair(s), name, fg(g), p(g["wilcoxon_p"]), g["n"]]
        for s in result["summary"]
        for name, g in s["gains"].items()
    ]
    keys = sorted({k for r in result["cells"] for k in r if isinstance(r[k], float) and k not in COST_KEYS})
    seed_rows = [
        [r["setting"], pair(r), r["seed"], *(f"{r[k]:.2f}" if k in r else "–" for k in keys)] for r in result["cells"]
    ]
    machine, cost = result["machine"], result["cost"]
    return "\n".join(
        [
            "# Is it the generous knowledge or the extra epochs? (benchmarks/method.py)",
            "",
            f"Plan: benchmarks/results/method-plan.md (committed before these runs). Top-1 % on the primary setting is "
            f"measured on a {BIG_TEST_PER_CLASS}-per-class test split from the same generator; elsewhere on the "
            "recipe's test split. The primary unit is a teacher seed: the mean over its "
            f"{STUDENT_SEEDS} student seeds of KD ← GT minus KD ← continued teacher. Intervals are 95% t-intervals "
            "over teacher seeds; p is the two-sided Wilcoxon signed-rank test, Holm-adjusted over the two pairs.",
            "",
            f"Machine: {machine['cpu']}, {machine['cores']} cores shared with other work, one thread per run, no GPU; "
            f"{cost['cpu_seconds'] / 3600:.2f} CPU-hours in all. Command: `{result['command']}`",
            "",
            "## Primary: KD students of the GT minus those of the continued teacher",
            "",
            markdown_table(
                [
                    "setting",
                    "pair",
                    "teacher seeds",
                    "GT (teacher)",
                    "continued (teacher)",
                    "KD ← GT",
                    "KD ← continued",
                    "GT − continued [95% CI]",
                    "Wilcoxon p",
                    "Holm p",
                    "reading",
                ],
                primary,
            ),
            "Variance of the unit (points): between teacher seeds and within (student seed and test noise), and the "
            f"teacher seeds a ±{MARGIN:g} interval would need:",
            "",
            markdown_table(["setting", "pair", "σ between", "σ within", "teacher seeds for ±0.5"], variance),
            *(
                [
                    f"No continued arm in {', '.join(untested)}: its GT is trained from scratch, so it has no extra "
                    "epochs over the ST to control for; its GT − ST is under Secondary.",
                    "",
                ]
                if untested
                else []
            ),
            "## Secondary",
            "",
            markdown_table(["setting", "pair", "difference", "mean [95% CI]", "Wilcoxon p", "n"], secondary),
            "## Every seed",
            "",
            markdown_table(["setting", "pair", "seed", *keys], seed_rows),
            "Determinism: the CE-only student is trained twice per secondary cell with the same seed; identical "
            f"everywhere: {all(s['ce_repeat_identical'] is not False for s in result['summary'])}.",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = grid.grid_parser(
        __doc__.split("\n")[0], TEACHER_SEEDS, SETTINGS, [PRIMARY, "digits-20%"], PAIRS, "benchmarks/runs/method"
    )
    args = parser.parse_args(argv)
    pairs, extra = grid.pairs_and_overrides(args)
    grid_cells = cells(args.settings, pairs, args.seeds)
    runs = {c: cell_runs(c, args.runs, args.device, extra) for c in grid_cells}
    records = grid.run_grid(args, runs, lambda c: cell_record(c, runs[c], c.setting == PRIMARY))
    if records is None:
        return
    summary = summarize_cells(records)
    primary = [s for s in summary if s["setting"] == PRIMARY]
    for s in summary:
        s["holm_p"] = None
    for s, adjusted in zip(primary, holm([s["gt_minus_continued"]["wilcoxon_p"] for s in primary])):
        s["holm_p"] = adjusted
    result = {
        "benchmark": "method",
        "command": grid.command_line(),
        "machine": grid.machine(),
        "seeds": args.seeds,
        "student_seeds": STUDENT_SEEDS,
        "big_test_per_class": BIG_TEST_PER_CLASS,
        "settings": {name: asdict(SETTINGS[name]) for name in args.settings},
        "extra_overrides": extra,
        "pairs": [{"teacher": t, "student": s} for t, s in pairs],
        "generous": shared_knobs(records),
        "cells": records,
        "summary": summary,
        "cost": {key: sum(r[key] for r in records) for key in ("cpu_seconds", "wall_seconds")},
    }
    grid.publish(args.results, "method", result, markdown(result))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
