"""The pure parts of benchmarks/method.py and gt_sweep.py: statistics, tables, the grid of runs, resuming.

No experiment runs here: run directories are fabricated with the metrics.json contract's keys.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from test_paper_bench import assert_readme_row_quotes

from benchmarks import grid, gt_sweep, method
from gtcompress.config import load_config
from gtcompress.errors import UserError
from gtcompress.stages import STAGE_NAMES


def test_t_interval_matches_the_t_table():
    lo, hi = grid.t_interval([1.0, 2.0, 3.0])
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, df=2) from the table; sample std 1
    assert lo == pytest.approx(2 - half, abs=1e-5) and hi == pytest.approx(2 + half, abs=1e-5)
    lo, hi = grid.t_interval([0.0, 1.0] * 5)
    assert hi - lo == pytest.approx(2 * 2.262157 * math.sqrt(5 / 18) / math.sqrt(10), abs=1e-5)
    assert grid.t_interval([3.0]) is None


def test_summary_keeps_every_value_and_uses_the_sample_std():
    s = grid.summarize([80, 82, 84])
    assert s["values"] == [80.0, 82.0, 84.0] and s["n"] == 3
    assert s["mean"] == 82.0 and s["std"] == pytest.approx(2.0)
    assert s["ci95"][0] < 82 < s["ci95"][1]
    one = grid.summarize([70.5])
    assert one["std"] is None and one["ci95"] is None


def test_formatting_of_means_and_gains():
    assert grid.fmt_mean_std(grid.summarize([1, 2, 3])) == "2.00 ± 1.00"
    assert grid.fmt_mean_std(grid.summarize([1.234])) == "1.23"
    assert grid.fmt_gain({"mean": 0.5, "ci95": (-0.8, 1.84)}) == "+0.50 [-0.80, +1.84]"
    assert grid.fmt_gain({"mean": -1.0, "ci95": None}) == "-1.00"


def test_method_grid_runs_whole_primary_teacher_seeds_first():
    got = method.cells([method.PRIMARY, "digits-20%"], method.PAIRS, range(10))
    assert len(set(got)) == len(method.PAIRS) * (10 + len(method.SECONDARY_SEEDS)) == len(got)
    assert all(c.setting == method.PRIMARY for c in got[:20])
    assert {c.seed for c in got if c.setting == "digits-20%"} == set(method.SECONDARY_SEEDS)
    assert [c.seed for c in got[:4]] == [0, 0, 1, 1], "both pairs of a seed before the next seed"


def test_cifar100_on_a_gpu_runs_every_seed_given():
    got = method.cells(["cifar100"], [("resnet50", "mobilenetv3_small_100")], range(10))
    assert [c.seed for c in got] == list(range(10))


def _options(run: grid.Task) -> tuple[dict[str, str], dict[str, object]]:
    """A run's options and its --set overrides."""
    args, opts, sets = list(run.args), {}, {}
    while args:
        key = args.pop(0)
        if key == "--set":
            k, _, v = args.pop(0).partition("=")
            sets[k] = yaml.safe_load(v)
        elif args and not args[0].startswith("--"):
            opts[key] = args.pop(0)
        else:
            opts[key] = True
    return opts, sets


def test_each_primary_cell_reuses_its_teachers_across_student_seeds_and_arms(tmp_path):
    cell = method.Cell(method.PRIMARY, *method.ABLATION_PAIR, 1)
    runs = method.cell_runs(cell, tmp_path)
    assert list(runs) == ["compare", "gt1", "ct1", "gt2", "ct2", "dkd", "full", "fixed_t"]
    compare, compare_sets = _options(runs["compare"])
    assert compare["--compare"] and compare["--method"] == "kd" and compare["--seed"] == "1"
    assert "--teacher-checkpoint" not in compare
    assert {"continued_teacher", "student_from_continued", "student_ce"} <= set(runs["compare"].stages)
    out = runs["compare"].out
    for j in (1, 2):
        (gt, gt_sets), (ct, ct_sets) = _options(runs[f"gt{j}"]), _options(runs[f"ct{j}"])
        assert gt["--seed"] == ct["--seed"] == str(1 + 1000 * j), "the arms of a student seed are paired"
        assert gt["--teacher-checkpoint"] == ct["--teacher-checkpoint"] == str(out / "standard_teacher.pt")
        assert gt_sets["generous.checkpoint"] == str(out / "generous_teacher.pt")
        assert ct_sets["generous.checkpoint"] == str(out / "continued_teacher.pt")
    dkd, dkd_sets = _options(runs["dkd"])
    assert dkd["--compare"] and dkd["--method"] == "dkd" and dkd["--seed"] == "1"
    assert "continued_teacher" not in runs["dkd"].stages, "a loaded GT has no continued arm"
    assert _options(runs["full"])[1]["generous.classes"] == "all"
    assert _options(runs["fixed_t"])[1]["generous.temperature"] == method.FIXED_T
    assert "generous.checkpoint" not in _options(runs["full"])[1], "the ablations train their own GT"
    assert compare_sets == method.SETTINGS[method.PRIMARY].overrides
    cfg = load_config(grid.REPO / compare["--recipe"], compare_sets)
    assert cfg.generous.train.epochs == cfg.teacher.train.epochs // 2


def test_secondary_runs_only_where_the_plan_puts_them(tmp_path):
    other_pair = method.cell_runs(method.Cell(method.PRIMARY, *method.PAIRS[0], 2), tmp_path)
    assert "dkd" in other_pair and "full" not in other_pair
    late = method.cell_runs(method.Cell(method.PRIMARY, *method.PAIRS[0], 7), tmp_path)
    assert list(late) == ["compare", "gt1", "ct1", "gt2", "ct2"]
    low_data = method.cell_runs(method.Cell("digits-20%", *method.PAIRS[0], 0), tmp_path)
    assert list(low_data) == ["compare"]
    gpu = method.cell_runs(method.Cell(method.PRIMARY, *method.PAIRS[0], 0), tmp_path, "cuda", {"precision": "bf16"})
    for run in gpu.values():
        opts, sets = _options(run)
        assert opts["--device"] == "cuda" and sets["precision"] == "bf16"


def test_run_state_drives_start_or_resume(tmp_path):
    run = grid.Task(tmp_path / "r", ("--recipe", "x.yaml"))
    assert grid.run_state(run) == "new"
    assert grid.distill_command(run, "py")[-4:] == ["--recipe", "x.yaml", "--out", str(run.out)]
    run.out.mkdir()
    (run.out / "config.yaml").write_text("seed: 0\n")
    (run.out / "metrics.json").write_text(json.dumps({"standard_teacher": {}}))
    assert grid.run_state(run) == "partial"
    assert grid.distill_command(run, "py") == ["py", "-m", "gtcompress", "distill", "--resume", "--out", str(run.out)]
    (run.out / "metrics.json").write_text(json.dumps({s: {} for s in STAGE_NAMES}))
    assert grid.run_state(run) == "done"


def test_run_groups_skips_finished_runs_and_keeps_order(tmp_path, monkeypatch):
    done = grid.Task(tmp_path / "done", ())
    done.out.mkdir()
    (done.out / "metrics.json").write_text(json.dumps({s: {} for s in STAGE_NAMES}))
    first, second = grid.Task(tmp_path / "a", ("1",)), grid.Task(tmp_path / "b", ("2",))
    calls = []
    monkeypatch.setattr(
        grid, "execute", lambda run, cmd, threads: calls.append(run) or {"cpu_seconds": 1.0, "wall_seconds": 1.0}
    )
    grid.run_groups([[done, first, second], [done]], jobs=2, say=lambda s: None)
    assert calls == [first, second]


def test_execute_records_cost_per_attempt_and_fails_loudly(tmp_path):
    run = grid.Task(tmp_path / "k1-b0.5", ())
    run.out.mkdir()
    cost = grid.execute(run, [sys.executable, "-c", "sum(range(10**6))"])
    assert cost["cpu_seconds"] > 0 and cost["wall_seconds"] >= cost["cpu_seconds"] * 0.5
    grid.execute(run, [sys.executable, "-c", "print('again')"])
    assert len(json.loads((run.out / grid.COST_FILE).read_text())["attempts"]) == 2
    assert grid.run_cost(run)["cpu_seconds"] > cost["cpu_seconds"]
    assert "again" in (tmp_path / "k1-b0.5.log").read_text()
    with pytest.raises(RuntimeError, match="exit code 3"):
        grid.execute(run, [sys.executable, "-c", "raise SystemExit(3)"])


def _fake_cell(root: Path, cell: method.Cell, top1: dict[str, float]) -> dict[str, grid.Task]:
    """Write the metrics.json files a cell's runs would leave, with the given values."""
    runs = method.cell_runs(cell, root)
    values = {**method.VALUES, **method._student_values()}
    for name, run in runs.items():
        stages = {stage: {"top1": 0.0, "train_seconds": 1.0} for stage in run.stages}
        for key, (r, stage) in values.items():
            if r == name and stage in stages:
                stages[stage]["top1"] = top1[key]
        run.out.mkdir(parents=True)
        (run.out / "metrics.json").write_text(json.dumps(stages))
        (run.out / "config.yaml").write_text(
            yaml.safe_dump(
                {"generous": {"k": 1.0, "beta": 2.0, "warmup": 0.2, "init": "standard", "train": {"epochs": 5}}}
            )
        )
    return runs


def test_primary_unit_is_the_mean_over_student_seeds_paired_per_teacher_seed(tmp_path):
    records = []
    for seed, shift in enumerate([0.0, 4.0, -3.0, 1.0]):
        cell = method.Cell("digits-20%", *method.PAIRS[0], seed)
        base = {k: 50.0 + shift for k in [*method.VALUES, *method._student_values()]}
        diffs = [(1.0, 0.0), (0.5, 0.0), (0.0, 0.0), (2.0, 0.0)][seed]
        base["kd_gt0"] += diffs[0]
        runs = _fake_cell(tmp_path, cell, base)
        records.append(method.cell_record(cell, runs, big_test=False))
    [summary] = method.summarize_cells(records)
    gain = summary["gt_minus_continued"]
    assert gain["values"] == [1.0, 0.5, 0.0, 2.0], "paired: the spread between teacher seeds cancels"
    assert gain["mean"] == pytest.approx(0.875)
    assert gain["wilcoxon_p"] == pytest.approx(0.25)  # exact: 3 non-zero positive differences
    assert summary["gains"]["kd_gt_minus_st"]["values"] == [1.0, 0.5, 0.0, 2.0]
    text = method.markdown(
        {
            **{"summary": [{**summary, "holm_p": None}], "cells": records},
            "machine": {"cpu": "cpu", "cores": 2},
            "cost": {"cpu_seconds": 3600.0},
            "command": "python x",
        }
    )
    assert "+0.88 [" in text and "| digits-20% | resnet18 → mobilenetv3_small_100 | 0 |" in text


def test_a_scratch_gt_setting_has_no_continued_arm_and_reports_gt_minus_st(tmp_path, monkeypatch):
    """A setting whose GT is trained from scratch (the recipe's default) has no extra epochs, no continued arm."""
    monkeypatch.setitem(method.SETTINGS, "scratch", method.Setting("recipes/cifar100_resnet50_mobilenetv3.yaml", ""))
    records = []
    for seed, gain in enumerate([1.0, 2.0, 0.5]):
        cell = method.Cell("scratch", "resnet50", "mobilenetv3_small_100", seed)
        runs = method.cell_runs(cell, tmp_path)
        assert list(runs) == ["compare"] and "continued_teacher" not in runs["compare"].stages
        values = {k: 60.0 for k in [*method.VALUES, *method._student_values()]}
        records.append(method.cell_record(cell, _fake_cell(tmp_path, cell, {**values, "kd_gt0": 60.0 + gain}), False))
    assert "ct" not in records[0] and "kd_ct0" not in records[0]
    [summary] = method.summarize_cells(records)
    assert summary["gt_minus_continued"] is None
    assert summary["gains"]["kd_gt_minus_st"]["values"] == [1.0, 2.0, 0.5]
    result = {"summary": [{**summary, "holm_p": None}], "cells": records, "command": "python x"}
    text = method.markdown({**result, "machine": {"cpu": "cpu", "cores": 2}, "cost": {"cpu_seconds": 1.0}})
    assert "No continued arm in scratch" in text and "kd_gt_minus_st | +1.17 [" in text


def test_unit_difference_averages_the_student_seeds():
    record = {"kd_gt0": 70.0, "kd_ct0": 69.0, "kd_gt1": 72.0, "kd_ct1": 70.0, "kd_gt2": 71.0, "kd_ct2": 71.0}
    mean, diffs = method.unit_difference(record, "gt", "ct")
    assert diffs == [1.0, 2.0, 0.0] and mean == pytest.approx(1.0)


def test_variance_components_split_between_and_within_teacher_seeds():
    v = method.variance_components([[1.0, 3.0], [5.0, 7.0]])
    assert v["within"] == pytest.approx(2.0)  # each teacher seed's two students differ by 2: variance 2
    assert v["between"] == pytest.approx(8.0 - 2.0 / 2)  # the unit means 2 and 6 vary by 8
    n = v["teacher_seeds_needed"]
    half_width = lambda k: method.stats.t.ppf(0.975, k - 1) * math.sqrt(8.0 / k)  # noqa: E731
    assert half_width(n) <= method.MARGIN < half_width(n - 1), "the fewest seeds for a ±0.5 interval"
    assert method.variance_components([[1.0, 2.0]])["between"] is None


def test_verdicts_follow_the_plan():
    assert method.verdict({"mean": 0.8, "ci95": (0.2, 1.4)}).startswith("the GT's students are better")
    assert "matches the GT" in method.verdict({"mean": 0.0, "ci95": (-0.3, 0.4)})
    assert method.verdict({"mean": 0.4, "ci95": (-0.6, 1.4)}).startswith("not distinguishable")
    assert method.verdict({"mean": -1.0, "ci95": (-1.5, -0.5)}).startswith("the continued teacher's students")


def test_holm_adjusts_the_primary_p_values():
    assert method.holm([0.01, 0.04]) == [pytest.approx(0.02), pytest.approx(0.04)]
    assert method.holm([0.04, 0.01]) == [pytest.approx(0.04), pytest.approx(0.02)]
    assert method.holm([0.3, None]) == [pytest.approx(0.3), None]


def test_sweep_grid_loads_one_standard_teacher_per_seed(tmp_path):
    cells = gt_sweep.sweep_cells([100])
    assert len(cells) == 3 * 4 * 2 and cells[0].is_base and sum(c.is_base for c in cells) == 1
    base = gt_sweep.cell_run(cells[0], tmp_path, gt_epochs=10)
    assert "--compare" in base.args and "--teacher-checkpoint" not in base.args
    for cell in cells[1:]:
        opts, sets = _options(gt_sweep.cell_run(cell, tmp_path, gt_epochs=10))
        assert opts["--teacher-checkpoint"] == str(base.out / "standard_teacher.pt")
        assert sets["generous.train.epochs"] == (10 if cell.init == "scratch" else 5)
        assert (sets["generous.k"], sets["generous.beta"], sets["generous.init"]) == (cell.k, cell.beta, cell.init)
        assert sets["data.synthetic.seed"] == gt_sweep.DATA_SEED != 0, "the sweep must not see method.py's data"


def test_defaults_rule_averages_both_inits():
    records = []
    for cell in gt_sweep.sweep_cells([100]):
        top1 = 70.0 + {(4.0, 2.0): 2.0, (1.0, 4.0): 1.5}.get((cell.k, cell.beta), 0.0)
        if (cell.k, cell.beta, cell.init) == (1.0, 4.0, "standard"):
            top1 += 0.8  # the best single cell, but (1, 4) is worse than (4, 2) over both inits
        records.append({"k": cell.k, "beta": cell.beta, "init": cell.init, "student_top1": top1})
    choice = gt_sweep.choose_defaults(records)
    assert (choice["k"], choice["beta"]) == (4.0, 2.0)
    assert choice["init"] == "standard", "standard's mean is higher by 0.8/12 points"
    for r in records:
        r["student_top1"] -= 1.0 if r["init"] == "standard" else 0.0
    assert gt_sweep.choose_defaults(records)["init"] == "scratch"


def test_gt_epochs_may_differ_by_setting_but_not_within_one():
    def record(setting, epochs, beta=2.0):
        return {
            "setting": setting,
            "generous": {"k": 1.0, "beta": beta, "warmup": 0.2, "init": "standard", "epochs": epochs},
        }

    assert method.shared_knobs([record("digits", 4), record("digits", 4), record("synthetic", 5)]) == {
        "k": 1.0,
        "beta": 2.0,
        "warmup": 0.2,
        "init": "standard",
    }
    with pytest.raises(UserError, match="different GT knobs"):
        method.shared_knobs([record("digits", 4), record("digits", 6)])
    with pytest.raises(UserError, match="different GT knobs"):
        method.shared_knobs([record("digits", 4), record("synthetic", 5, beta=1.0)])


def test_readme_states_the_committed_primary_result():
    """README "Does it work?" quotes benchmarks/results/method.json: each pair's interval and reading."""
    result = json.loads((grid.REPO / "benchmarks/results/method.json").read_text())
    primary = [s for s in result["summary"] if s["setting"] == method.PRIMARY]
    assert len(primary) == len(method.PAIRS) and all(len(s["seeds"]) >= 10 for s in primary)
    for s in primary:
        verdict = s["gt_minus_continued"]["verdict"].removesuffix(" at this precision")
        assert_readme_row_quotes(s, [s["gt_minus_continued"]], verdict)
