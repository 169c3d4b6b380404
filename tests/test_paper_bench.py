"""The pure parts of benchmarks/paper.py: the grid of runs each cell needs, the pre-registered tests and readings.

No experiment runs here: records are fabricated with the keys `cell_record` writes.
"""

import json
import statistics

import pytest
import yaml

from benchmarks import grid, paper
from gtcompress.config import load_config


def _sets(run: grid.Task) -> dict[str, object]:
    args = list(run.args)
    return {
        k: yaml.safe_load(v) for k, _, v in (args[i + 1].partition("=") for i, a in enumerate(args) if a == "--set")
    }


def _option(run: grid.Task, name: str) -> str:
    return run.args[run.args.index(name) + 1]


def _config(run: grid.Task):
    return load_config(grid.REPO / _option(run, "--recipe"), _sets(run))


def test_a_cell_trains_its_teachers_once_and_pairs_every_arm_by_student_seed(tmp_path):
    cell = paper.Cell(paper.PRIMARY, *paper.ABLATION_PAIR, 1)
    runs = paper.cell_runs(cell, tmp_path)
    assert list(runs) == ["compare", "gt1", "st1", "ba1", "gt2", "st2", "ba2", "pkd_gt", "pkd_st", "ft", "ct", "k2"]
    compare = runs["compare"]
    assert "--compare" in compare.args and "--teacher-checkpoint" not in compare.args
    assert {"born_again_teacher", "student_from_born_again", "student_from_standard"} <= set(compare.stages)
    assert "continued_teacher" not in compare.stages, "a scratch GT's control is the born-again teacher"
    cfg = _config(compare)
    assert cfg.generous.init == "scratch" and cfg.generous.train == cfg.teacher.train, "the ST's schedule"
    assert (cfg.generous.beta, cfg.generous.k, cfg.generous.scale) == (1.0, 1.0, "st_temperature")
    assert (cfg.student.kd.ce_weight, cfg.student.kd.kd_weight, cfg.student.kd.temperature) == (0.1, 0.9, 20.0)
    for j in (1, 2):
        arms = [runs[f"{arm}{j}"] for arm in paper.ARMS]
        assert {_option(r, "--seed") for r in arms} == {str(1 + 1000 * j)}, "one student seed for the three arms"
        assert {_option(r, "--teacher-checkpoint") for r in arms} == {str(compare.out / "standard_teacher.pt")}
        loaded = [_sets(r)["generous.checkpoint"] for r in arms]
        assert loaded == [str(compare.out / f"{stage}.pt") for stage in paper.ARMS.values()]
        assert all(_config(r).student.kd.temperature == 20.0 for r in arms)


def test_the_secondary_runs_change_only_what_they_test(tmp_path):
    runs = paper.cell_runs(paper.Cell(paper.PRIMARY, *paper.ABLATION_PAIR, 0), tmp_path)
    product = _config(runs["pkd_gt"]).student.kd
    assert (product.ce_weight, product.kd_weight, product.temperature) == (1.0, 1.0, 4.0)
    ft, ct = _config(runs["ft"]), _config(runs["ct"])
    assert ft.generous.init == ct.generous.init == "standard" and ft.generous.train.epochs == 5
    assert ft.generous.beta == 1.0 and ct.generous.beta == 0.0, "the continued teacher: the same run without the term"
    assert ft.generous.model_copy(update={"beta": 0.0}) == ct.generous
    k2 = _config(runs["k2"])
    assert k2.generous.scale == "k_squared" and k2.generous.init == "scratch"
    assert k2.student == _config(runs["compare"]).student


def test_secondary_runs_only_on_the_plans_seeds_and_pair(tmp_path):
    late = paper.cell_runs(paper.Cell(paper.PRIMARY, *paper.PAIRS[0], 7), tmp_path)
    assert list(late) == ["compare", "gt1", "st1", "ba1", "gt2", "st2", "ba2"]
    early_other_pair = paper.cell_runs(paper.Cell(paper.PRIMARY, *paper.PAIRS[0], 2), tmp_path)
    assert "pkd_gt" in early_other_pair and "k2" not in early_other_pair
    got = paper.cells([paper.PRIMARY], paper.PAIRS, range(10))
    assert [c.seed for c in got[:4]] == [0, 0, 1, 1] and len(got) == 20


def _record(seed: int, gain_st: float, gain_ba: float) -> dict:
    r = {
        "setting": paper.PRIMARY,
        "teacher": "t",
        "student": "s",
        "seed": seed,
        "cpu_seconds": 1.0,
        "wall_seconds": 1.0,
    }
    for j in range(paper.STUDENT_SEEDS):
        noise = 0.1 * ((seed + j) % 3 - 1)
        r[f"kd_st{j}"], r[f"kd_ba{j}"] = 70.0 + noise, 70.0 + gain_st - gain_ba
        r[f"kd_gt{j}"] = 70.0 + gain_st
    for arm in paper.ARMS:
        r[f"kd_{arm}"] = statistics.fmean(r[f"kd_{arm}{j}"] for j in range(paper.STUDENT_SEEDS))
    r.update(st=75.0, gt=76.0, ba=75.5, ce=60.0, kd_st0=r["kd_st0"])
    r["seconds"] = {"standard_teacher": 10.0, "generous_teacher": 13.0 + seed % 2}
    return r


def test_the_hypotheses_are_tested_on_teacher_seed_means_and_read_by_the_plans_rule():
    records = [_record(seed, 1.5 + 0.1 * (seed % 2), 0.1 * (seed % 3 - 1)) for seed in range(10)]
    (s,) = paper.summarize(records)
    expected_h1 = [statistics.fmean(paper.unit(r, "gt", "st")) for r in records]
    assert s["h1"]["values"] == pytest.approx(expected_h1)
    assert s["h1"]["reading"].startswith("students of the GT are better than those of the ST")
    assert s["h2"]["reading"].startswith("students of the GT and of the born-again teacher are equivalent")
    assert s["h1"]["holm_p"] == s["h1"]["wilcoxon_p"], "one pair: Holm changes nothing"
    assert s["gt_over_st_seconds"]["mean"] == pytest.approx(1.35)
    assert s["gains"]["kd_st_minus_ce"]["mean"] == pytest.approx(statistics.fmean(r["kd_st0"] - 60 for r in records))
    assert paper.claim([s]).startswith("partly shown")


@pytest.mark.parametrize(
    ("ci", "start"),
    [
        ((0.1, 1.0), "students of the GT are better"),
        ((-0.4, 0.45), "students of the GT and of the ST are equivalent"),
        ((-1.0, -0.2), "students of the ST are better"),
        ((-0.6, 0.9), "not shown"),
    ],
)
def test_reading_of_an_interval(ci, start):
    assert paper.reading({"mean": sum(ci) / 2, "ci95": ci}, "ST").startswith(start)


def test_a_stored_cell_is_not_run_again_and_a_finished_one_is_stored(tmp_path, monkeypatch):
    args = grid.grid_parser("x", [0, 1], paper.SETTINGS, [paper.PRIMARY], paper.PAIRS, "r").parse_args(
        ["--results", str(tmp_path / "results")]
    )
    store = paper.store(args, {})
    old, new = (paper.Cell(paper.PRIMARY, *paper.PAIRS[0], seed) for seed in (0, 1))
    runs = {c: paper.cell_runs(c, tmp_path / "runs") for c in (old, new)}
    store(old).parent.mkdir(parents=True)
    store(old).write_text(json.dumps({"seed": 0, "from": "store"}))
    for run in runs[new].values():  # the new cell's runs finished in this session
        run.out.mkdir(parents=True)
        (run.out / "metrics.json").write_text(json.dumps({s: {} for s in run.stages}))
    monkeypatch.setattr(grid, "execute", lambda *a: pytest.fail("a finished or stored cell must not run"))
    records = grid.run_grid(args, runs, lambda c: {"seed": c.seed, "from": "runs"}, store)
    assert [r["from"] for r in records] == ["store", "runs"]
    kept = json.loads(store(new).read_text())
    assert kept["from"] == "runs" and kept["code"] == grid.code_commit() and len(kept["code"]) == 40
    assert paper.store(args, {"seed": 3}) is None, "overridden runs are not the plan's cells"


def test_a_missing_run_of_an_unstored_cell_stops_the_report(tmp_path):
    args = grid.grid_parser("x", [0], paper.SETTINGS, [paper.PRIMARY], paper.PAIRS, "r").parse_args(
        ["--results", str(tmp_path), "--report-only"]
    )
    cell = paper.Cell(paper.PRIMARY, *paper.PAIRS[0], 0)
    with pytest.raises(SystemExit, match="unfinished"):
        grid.run_grid(args, {cell: paper.cell_runs(cell, tmp_path)}, lambda c: {}, paper.store(args, {}))
    assert not paper.store(args, {})(cell).exists()


def assert_readme_row_quotes(pair: dict, gains: list[dict], *texts: str) -> None:
    """Some README table row of the pair (a grid's rows start with "| teacher → student |") holds every gain as
    grid.fmt_gain writes it, with the README's minus sign, and every text."""
    readme = (grid.REPO / "README.md").read_text()
    quoted = [grid.fmt_gain(g).replace("-", "−") for g in gains] + list(texts)
    rows = [line for line in readme.splitlines() if line.startswith(f"| {pair['teacher']} → {pair['student']} |")]
    assert any(all(q in row for q in quoted) for row in rows), quoted


def test_readme_states_the_committed_paper_result():
    """README "Does it work?" quotes benchmarks/results/paper.json: each pair's H1, H2 and product-KD intervals."""
    result = json.loads((grid.REPO / "benchmarks/results/paper.json").read_text())
    primary = [s for s in result["summary"] if s["setting"] == paper.PRIMARY]
    assert len(primary) == 2 and all(len(s["seeds"]) >= 10 for s in primary)
    for s in primary:
        assert_readme_row_quotes(s, [s["h1"], s["h2"], s["gains"]["product_kd_gt_minus_st"]])
