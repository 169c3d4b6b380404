"""The pure parts of benchmarks/method.py and gt_sweep.py: statistics, tables, the grid of runs, resuming.

No experiment runs here: run directories are fabricated with the metrics.json contract's keys.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import grid  # noqa: E402
import gt_sweep  # noqa: E402
import method  # noqa: E402

from gtcompress.config import load_config  # noqa: E402
from gtcompress.errors import UserError  # noqa: E402
from gtcompress.stages import STAGE_NAMES  # noqa: E402


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


def test_markdown_table_right_aligns_numbers():
    text = grid.markdown_table(["name", "top-1"], [["a", "81.00 ± 1.00"], ["b", "+0.50 [-1.00, +2.00]"]])
    lines = text.splitlines()
    assert lines[0] == "| name | top-1 |" and lines[1] == "| --- | ---: |" and len(lines) == 4


def test_method_grid_is_every_setting_pair_and_seed():
    got = method.cells(method.CPU_SETTINGS, method.PAIRS, [0, 1, 2])
    assert len(set(got)) == len(method.CPU_SETTINGS) * len(method.PAIRS) * 3 == len(got)
    assert [c.seed for c in got[:6]] == [0] * 6, "whole seeds first, so an interruption leaves seeds complete"
    assert ("resnet18", "mobilenetv3_small_100") in method.PAIRS


def _options(run: grid.Run) -> tuple[dict[str, str], dict[str, object]]:
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


@pytest.mark.parametrize("setting, st_epochs", [("digits", 8), ("digits-20%", 24), ("synthetic", 10)])
def test_each_cell_trains_its_teachers_once_and_every_arm_alike(tmp_path, setting, st_epochs):
    cell = method.Cell(setting, "resnet18", "mobilenetv3_small_100", 1)
    runs = method.cell_runs(cell, tmp_path)
    (kd, kd_sets), (dkd, dkd_sets), (sc, sc_sets) = (_options(runs[a]) for a in ("kd", "dkd", "scratch"))
    assert kd["--compare"] and dkd["--compare"] and "--compare" not in sc
    assert (kd["--method"], dkd["--method"], sc["--method"]) == ("kd", "dkd", "kd")
    assert "--teacher-checkpoint" not in kd
    assert dkd["--teacher-checkpoint"] == sc["--teacher-checkpoint"] == str(runs["kd"].out / "standard_teacher.pt")
    assert dkd_sets["generous.checkpoint"] == str(runs["kd"].out / "generous_teacher.pt")
    assert sc["--gt-init"] == "scratch" and sc_sets["generous.train.epochs"] == st_epochs
    for opts in (kd, dkd, sc):
        assert (opts["--seed"], opts["--teacher"], opts["--device"]) == ("1", "resnet18", "cpu")
    assert kd_sets == method.SETTINGS[setting].overrides
    assert dkd_sets == {**kd_sets, "generous.checkpoint": dkd_sets["generous.checkpoint"]}
    assert sc_sets == {**kd_sets, "generous.train.epochs": st_epochs}
    cfg = load_config(grid.REPO / kd["--recipe"], kd_sets)
    assert cfg.teacher.train.epochs == st_epochs and cfg.generous.init == "standard"
    assert cfg.generous.train.epochs == st_epochs // 2, "the default GT is a fine-tune for half the ST's epochs"
    extra = method.cell_runs(cell, tmp_path, "cuda", {"precision": "bf16"})
    for run in extra.values():
        opts, sets = _options(run)
        assert opts["--device"] == "cuda" and sets["precision"] == "bf16"
    assert runs["scratch"].stages == ("standard_teacher", "generous_teacher", "student")


def test_run_state_drives_start_or_resume(tmp_path):
    run = grid.Run(tmp_path / "r", ("--recipe", "x.yaml"))
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
    done = grid.Run(tmp_path / "done", ())
    done.out.mkdir()
    (done.out / "metrics.json").write_text(json.dumps({s: {} for s in STAGE_NAMES}))
    first, second = grid.Run(tmp_path / "a", ("1",)), grid.Run(tmp_path / "b", ("2",))
    calls = []
    monkeypatch.setattr(grid, "execute", lambda run, cmd, threads: calls.append(run) or {
        "cpu_seconds": 1.0, "wall_seconds": 1.0})
    grid.run_groups([[done, first, second], [done]], jobs=2, say=lambda s: None)
    assert calls == [first, second]


def test_execute_records_cost_per_attempt_and_fails_loudly(tmp_path):
    run = grid.Run(tmp_path / "k1-b0.5", ())
    run.out.mkdir()
    cost = grid.execute(run, [sys.executable, "-c", "sum(range(10**6))"])
    assert cost["cpu_seconds"] > 0 and cost["wall_seconds"] >= cost["cpu_seconds"] * 0.5
    grid.execute(run, [sys.executable, "-c", "print('again')"])
    assert len(json.loads((run.out / grid.COST_FILE).read_text())["attempts"]) == 2
    assert grid.run_cost(run)["cpu_seconds"] > cost["cpu_seconds"]
    assert "again" in (tmp_path / "k1-b0.5.log").read_text()
    with pytest.raises(RuntimeError, match="exit code 3"):
        grid.execute(run, [sys.executable, "-c", "raise SystemExit(3)"])


def _fake_cell(root: Path, cell: method.Cell, top1: dict[str, float]) -> None:
    """Write the metrics.json files the three runs of a cell would leave."""
    runs = method.cell_runs(cell, root)
    for arm, run in runs.items():
        stages = {name: {"top1": 0.0, "train_seconds": 0.0} for name in run.stages}
        for name, (a, stage, key) in method.VALUES.items():
            if a == arm:
                stages[stage][key] = top1[name]
        run.out.mkdir(parents=True)
        (run.out / "metrics.json").write_text(json.dumps(stages))
        (run.out / "config.yaml").write_text(yaml.safe_dump({"generous": {
            "k": 2.0, "beta": 1.0, "warmup": 0.2, "init": "standard", "train": {"epochs": 4}}}))


def test_gains_are_paired_per_seed(tmp_path):
    records = []
    for seed, (st_student, gt_student) in enumerate([(70.0, 71.0), (74.0, 74.5), (72.0, 73.5)]):
        cell = method.Cell("synthetic", "resnet18", "mobilenetv3_small_100", seed)
        values = {name: 50.0 + seed for name in method.VALUES}
        values.update(kd_st=st_student, kd_gt=gt_student, st_seconds=100.0, gt_seconds=50.0, gt_scratch_seconds=125.0)
        _fake_cell(tmp_path, cell, values)
        records.append(method.cell_record(cell, method.cell_runs(cell, tmp_path)))
    [summary] = method.summarize_cells(records)
    gain = summary["gains"]["kd_gt_minus_st"]
    assert gain["values"] == [1.0, 0.5, 1.5] and gain["mean"] == pytest.approx(1.0)
    assert gain["std"] == pytest.approx(0.5), "paired: the 4-point spread between seeds cancels"
    assert summary["time_ratios"]["gt_over_st"]["mean"] == pytest.approx(0.5)
    assert summary["time_ratios"]["gt_scratch_over_st"]["mean"] == pytest.approx(1.25)
    assert summary["ce_repeat_identical"] and records[0]["generous"]["k"] == 2.0
    result = {"summary": [summary], "cells": records, "seeds": [0, 1, 2], "generous": records[0]["generous"],
              "machine": {"cpu": "cpu", "cores": 2}, "cost": {"cpu_seconds": 3600.0}, "command": "python x"}
    text = method.markdown(result)
    assert "+1.00 [" in text and "| synthetic | resnet18 → mobilenetv3_small_100 | 2 |" in text


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
        return {"setting": setting, "generous": {"k": 1.0, "beta": beta, "warmup": 0.2, "init": "standard",
                                                 "epochs": epochs}}

    assert method.shared_knobs([record("digits", 4), record("digits", 4), record("synthetic", 5)]) == {
        "k": 1.0, "beta": 2.0, "warmup": 0.2, "init": "standard"}
    with pytest.raises(UserError, match="different GT knobs"):
        method.shared_knobs([record("digits", 4), record("digits", 6)])
    with pytest.raises(UserError, match="different GT knobs"):
        method.shared_knobs([record("digits", 4), record("synthetic", 5, beta=1.0)])
