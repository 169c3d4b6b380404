"""The pure parts of benchmarks/scale.py: the runs of a cell, the scales they are given, the pre-registered rule.

No experiment runs here: the compare run's records and the cells' values are fabricated; the last test holds the
README to the committed result.
"""

import json

import pytest
from test_paper_bench import _config, _option, _sets, assert_readme_row_quotes

from benchmarks import grid, scale
from gtcompress.config import MatchScale
from gtcompress.files import write_json

PAIR = scale.PAIRS[0]


def test_the_primary_pair_and_seeds_are_the_plans():
    assert PAIR == ("resnet10t", "mobilenetv3_small_050") and scale.TEACHER_SEEDS == tuple(range(6))
    assert scale.STUDENT_SEEDS == 2


def test_a_cell_pairs_every_arm_by_student_seed_and_scales_only_the_teacher(tmp_path):
    runs = scale.cell_runs(scale.Cell(scale.PRIMARY, *PAIR, 3), tmp_path)
    assert list(runs) == [
        "compare", "a1_0", "a3_0", "bag_0", "ls_st0", "ls_gt0", "ls_ba0",
        "gt1", "st1", "a1_1", "a3_1", "bag_1", "ls_st1", "ls_gt1", "ls_ba1",
    ]  # fmt: skip
    compare = runs["compare"]
    assert "--compare" in compare.args and "born_again_teacher" in compare.stages
    for name, run in runs.items():
        if name == "compare":
            continue
        j = int(name[-1])
        assert _option(run, "--seed") == str(3 + 1000 * j), name
        assert _option(run, "--teacher-checkpoint") == str(compare.out / "standard_teacher.pt")
        cfg = _config(run)
        kd = cfg.student.kd
        assert (kd.ce_weight, kd.kd_weight, kd.temperature) == (0.1, 0.9, 20.0), "the authors' KD in every arm"
        assert cfg.student.method == ("lskd" if name.startswith("ls_") else "kd"), name
    teacher = lambda name: _sets(runs[name])["generous.checkpoint"]  # noqa: E731
    assert teacher("a3_1") == teacher("gt1") == str(compare.out / "generous_teacher.pt")
    assert teacher("a1_1") == teacher("st1") == str(compare.out / "standard_teacher.pt")
    assert teacher("bag_0") == teacher("ls_ba0") == str(compare.out / "born_again_teacher.pt")
    assert _config(runs["a3_0"]).student.kd.teacher_scale == MatchScale(match="standard_teacher")
    assert runs["a3_0"].later is None and runs["gt1"].later is None and runs["ls_gt1"].later is None


def test_scales_of_the_other_arms_are_read_from_the_compare_runs_records(tmp_path):
    runs = scale.cell_runs(scale.Cell(scale.PRIMARY, *PAIR, 0), tmp_path)
    medians = {"standard_teacher": 2.0, "generous_teacher": 10.0, "born_again_teacher": 4.0}
    write_json(
        runs["compare"].out / "metrics.json",
        {stage: {"logit_scale": {"train_std_median": m}} for stage, m in medians.items()},
    )
    assert runs["a1_0"].later() == {"student.kd.teacher_scale": 5.0}, "the ST at the GT's scale"
    assert runs["bag_1"].later() == {"student.kd.teacher_scale": 2.5}, "the born-again teacher at the GT's"
    command = grid.distill_command(runs["a1_1"])
    assert command[command.index("student.kd.teacher_scale=5.0") - 1] == "--set"


def _summary(primary_ci, h1_mean):
    return scale.decide({"ci95": primary_ci}, {"mean": h1_mean})


def test_the_rule_reads_the_primary_interval_against_half_of_h1():
    assert _summary((0.5, 1.0), 4.0) == ["the GT teaches something beyond its logit scale", "scale explains most of H1"]
    assert _summary((0.5, 3.0), 4.0) == ["the GT teaches something beyond its logit scale"]
    assert _summary((-1.0, 1.5), 4.0) == ["scale explains most of H1"]
    assert _summary((-1.0, 2.5), 4.0) == ["not distinguishable at this precision"]
    assert _summary(None, 4.0) == ["not enough seeds"]


def _record(seed: int, st: float, gt_gain: float, a3_gain: float) -> dict:
    """A fabricated cell: KD <- GT beats KD <- ST by gt_gain, the GT at the ST's scale by a3_gain."""
    r = {"setting": scale.PRIMARY, "teacher": PAIR[0], "student": PAIR[1], "seed": seed, "cpu_seconds": 1.0}
    r["wall_seconds"] = 1.0
    for j in range(scale.STUDENT_SEEDS):
        noise = 0.1 * j
        r |= {f"kd_st{j}": st + noise, f"kd_gt{j}": st + gt_gain + noise, f"a3_{j}": st + a3_gain + noise}
        r |= {f"a1_{j}": st + 1 + noise, f"bag_{j}": st + 2, f"ls_gt{j}": 60.0, f"ls_st{j}": 59.0, f"ls_ba{j}": 58.0}
    for name in ("kd_gt", "kd_st", "a1_", "a3_", "bag_", "ls_gt", "ls_st", "ls_ba"):
        r[name.rstrip("_")] = sum(r[f"{name}{j}"] for j in range(scale.STUDENT_SEEDS)) / scale.STUDENT_SEEDS
    r |= {"ce": 70.0, "st": 91.0, "gt": 91.5, "ba": 93.0}
    teacher = {"std_median": 7.0, "max_abs": 30.0, "entropy": 4.0, "train_std_median": 7.0}
    r["scales"] = {arm: dict(teacher, train_std_median=7.0 * (1 + (arm == "gt"))) for arm in scale.TEACHERS}
    return r


def test_summaries_test_the_planned_differences_per_teacher_seed():
    records = [_record(s, 55.0 + s, 5.0 + 0.1 * s, 0.2 * s - 0.4) for s in range(6)]
    (summary,) = scale.summarize(records)
    assert summary["h1"]["mean"] == pytest.approx(5.25)
    assert summary["primary"]["mean"] == pytest.approx(0.1)
    assert summary["primary"]["holm_p"] == summary["primary"]["wilcoxon_p"], "one pair: Holm leaves p as it is"
    assert summary["reading"] == ["scale explains most of H1"]
    assert summary["secondary"]["lskd_gt_minus_st"]["mean"] == pytest.approx(1.0)
    assert summary["gt_over_st_std"]["mean"] == pytest.approx(2.0)
    md = scale.markdown({"summary": [summary], "cells": records, "machine": {"cpu": "x", "cores": 2},
                         "cost": {"cpu_seconds": 3600.0}, "command": "python -m benchmarks.scale"})  # fmt: skip
    assert "scale explains most of H1" in md and "+5.25 [" in md


def test_a_compare_run_is_checked_against_the_paper_grids_cell_of_its_seed():
    cell = scale.Cell(scale.PRIMARY, *PAIR, 0)
    stored = grid.stored_record(
        scale.method.cell_dir(cell, grid.REPO / "benchmarks/results/paper-cells").with_suffix(".json")
    )
    same = {k: stored[k] for k in scale.SHARED}
    assert scale._paper_cell(cell, same)["same"] is True
    assert scale._paper_cell(cell, {**same, "gt": same["gt"] + 0.01})["same"] is False
    assert scale._paper_cell(scale.Cell(scale.PRIMARY, *PAIR, 99), same) is None, "no such seed in the paper grid"


def test_readme_states_the_committed_scale_result():
    """README "Does it work?" quotes benchmarks/results/scale.json: each pair's H1 and primary interval and the
    plan's reading of it."""
    result = json.loads((grid.REPO / "benchmarks/results/scale.json").read_text())
    assert len(result["summary"]) == 1 and result["summary"][0]["seeds"] == list(scale.TEACHER_SEEDS)
    for s in result["summary"]:
        assert_readme_row_quotes(s, [s["h1"], s["primary"]], *s["reading"])
