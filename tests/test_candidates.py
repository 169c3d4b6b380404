"""Several students from one GT, a latency budget checked before training, the front and the recommendation."""

import json
import re

import pytest
from conftest import INT8_TOLERANCE, TEACHER, assert_one_line_error, invoke

from gtcompress.recommend import pareto_front, recommend, recommendation_line, which_student
from gtcompress.records import Point, ReportRow, StageRecord
from gtcompress.rundir import RunDir

STUDENTS = ("mobilenetv3_small_050", "test_efficientnet")


def _point(name, top1, p50_ms, role="student"):
    return Point(name=name, role=role, stage=name, arch=name, precision="fp32", file=f"{name}.onnx", top1=top1,
                 p50_ms=p50_ms)  # fmt: skip


def test_the_front_keeps_what_nothing_beats_and_the_pick_is_the_most_accurate_within_budget():
    points = [
        _point(n, a, t)
        for n, a, t in [
            ("small", 80.0, 1.0),
            ("mid", 85.0, 2.0),
            ("slow-worse", 84.0, 3.0),
            ("big", 90.0, 5.0),
            ("tie-slower", 85.0, 2.5),
        ]
    ]
    assert [p.name for p in pareto_front(points)] == ["small", "mid", "big"]
    assert recommend(points, 2.4).pick.name == "mid"
    assert recommend(points).pick.name == "big"
    none = recommend(points, 0.5)
    assert none.pick is None and "0.5 ms budget" in none.reason


def test_the_same_accuracy_reached_by_two_sums_is_a_tie_that_speed_decides():
    checkpoint, export = _point("fp32", 97.22222222222223, 0.31), _point("fp16", 97.22222222222221, 0.29)
    assert [p.name for p in pareto_front([checkpoint, export])] == ["fp16"]
    assert recommend([checkpoint, export]).pick.name == "fp16"


def test_latencies_that_tie_within_their_noise_go_to_the_smaller_file():
    """fp32, fp16 and int8 with the same top-1: 0.180 ms against 0.183 ms is noise, so the 1.81 MB int8 file is
    recommended over the 6.15 MB fp32 one; a p50 clearly apart stays the faster's."""
    fp32, fp16, int8 = (
        _point(n, 96.39, p50).model_copy(update={"bytes": b, "p50_interval": i})
        for n, p50, b, i in [("fp32", 0.180, 6_150_000, (0.175, 0.186)), ("fp16", 0.183, 3_100_000, (0.178, 0.189)),
                             ("int8", 0.183, 1_810_000, (0.179, 0.188))]
    )  # fmt: skip
    pick = recommend([fp32, fp16, int8])
    assert pick.pick.name == "int8" and "ties with fp32's 0.180 ms within their bootstrap intervals" in pick.reason
    apart = int8.model_copy(update={"p50_ms": 0.250, "p50_interval": (0.240, 0.260)})
    faster = recommend([fp32, apart])
    assert faster.pick.name == "fp32", "a p50 outside the other's noise is slower"
    assert "int8 is as accurate and smaller (1.81 MB) but slower: p50 0.250 ms" in faster.reason, faster.reason
    assert "smaller" not in recommend([fp32, fp16.model_copy(update={"top1": 96.0})]).reason, "less accurate: not named"
    unknown = fp32.model_copy(update={"p50_interval": None})
    assert recommend([unknown, int8]).pick.name == "fp32", "without samples nothing is called a tie"


def test_a_model_at_chance_is_never_recommended():
    guess = _point("untrained", 8.61, 0.1).model_copy(update={"chance": 13.7})
    trained = _point("trained", 96.0, 0.5).model_copy(update={"chance": 13.7})
    assert recommend([guess, trained]).pick.name == "trained", "however fast the untrained one is"
    nothing = recommend([guess])
    assert nothing.pick is None and "at or near chance" in nothing.reason and "train longer" in nothing.reason


def test_the_report_warns_of_a_model_at_chance_and_of_a_gt_below_its_st():
    """13.5% on 360 images of 10 classes is within what a guess reaches with 99% probability (13.7%)."""
    from gtcompress.recommend import warnings

    records = {
        "standard_teacher": StageRecord(arch="a", top1=97.22, epochs=8, train_seconds=1, params=1, role="standard",
                                        num_classes=10, test_images=360, title="Standard Teacher"),
        "generous_teacher": StageRecord(arch="a", top1=93.33, epochs=8, train_seconds=1, params=1, role="generous",
                                        num_classes=10, test_images=360, title="Generous Teacher"),
        "student": StageRecord(arch="b", top1=13.5, epochs=0, train_seconds=0, params=1, role="student",
                               num_classes=10, test_images=360, title="student <- GT"),
    }  # fmt: skip
    lines = warnings(records)
    assert lines == [
        "student <- GT is at or near chance (top-1 13.50% with 10 classes, 360 test images): not recommended; train "
        "it longer (it had 0 epochs)",
        "the Generous Teacher (93.33%) is less accurate than the Standard Teacher (97.22%)",
    ]


def _rows(models):
    """Report rows for (stage, top-1, p50 ms) on onnxruntime."""
    return [
        ReportRow(name=m, stage=m, arch=m, precision="fp32", file=f"{m}.onnx", bytes=1, top1=a, params=1,
                  p50_ms={"onnxruntime": t}, setting={"onnxruntime": "1 thread"})
        for m, a, t in models
    ]  # fmt: skip


METRICS = {  # stage records: their identities decide who is a candidate, not their names
    name: StageRecord(arch=name, top1=0.0, epochs=1, train_seconds=1.0, params=1, **identity)
    for name, identity in (
        ("standard_teacher", {"role": "standard"}),
        ("generous_teacher", {"role": "generous"}),
        ("student", {"role": "student", "teacher_stage": "generous_teacher"}),
    )
}


def test_a_student_slower_than_its_teacher_is_not_shipped_and_the_report_says_why(tmp_path):
    rows = _rows([("standard_teacher", 90.0, 0.41), ("generous_teacher", 91.0, 0.45), ("student", 88.0, 1.0)])
    pareto, got = which_student(RunDir(tmp_path), METRICS, rows, "onnxruntime", 1, None)
    assert got.pick.stage == "generous_teacher" and got.pick.role == "teacher"
    assert got.reason == "no student is faster than the teacher"
    assert pareto.no_speed == (
        "On onnxruntime at batch 1 the students buy no speed over the teacher: the fastest student, student, "
        "takes 1.000 ms against 0.410 ms for standard_teacher (each at its best setting: 1 thread, 1 thread)."
    )
    line = recommendation_line(pareto, got)
    assert (
        line.startswith("On onnxruntime at batch 1 the students buy no speed")
        and "Recommended: generous_teacher" in line
    )


def test_without_a_budget_the_pick_is_the_best_student_that_buys_speed(tmp_path):
    rows = _rows([("generous_teacher", 95.0, 3.0), ("student", 90.0, 0.5)])
    pareto, got = which_student(RunDir(tmp_path), METRICS, rows, "onnxruntime", 1, None)
    assert got.pick.stage == "student" and pareto.no_speed is None
    assert {p.role for p in pareto.points} == {"student", "teacher"}
    _, within = which_student(RunDir(tmp_path), METRICS, rows, "onnxruntime", 1, 5.0)
    assert within.pick.stage == "generous_teacher", "a budget the teacher meets: the most accurate that fits"


@pytest.mark.slow
def test_candidates_prints_every_students_latency_on_the_target():
    result = invoke(
        "candidates", "--teacher", TEACHER, "--student", ",".join(STUDENTS), "--latency-budget", 1000,
        "--budget-batch", 2,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "candidates on onnxruntime fp32 (cpu), batch 2, budget 1000 ms" in result.stdout
    for arch in (f"{TEACHER} (teacher)", *STUDENTS):
        assert arch in result.stdout
    assert result.stdout.count("yes") == len(STUDENTS)


def test_a_candidate_slower_than_the_teacher_is_flagged_before_any_training():
    result = invoke("candidates", "--teacher", TEACHER, "--student", "resnet18", "--set", "budget.iters=10")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stdout.split())
    assert f"candidate resnet18 is not faster than the teacher {TEACHER}" in flat and "buys no speed" in flat
    ratio = re.search(r"resnet18 .*? (\d+\.\d+)×", flat)
    assert ratio and float(ratio.group(1)) < 1, flat


@pytest.mark.slow
def test_an_impossible_budget_trains_nothing_and_says_why(tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "distill", "--teacher", TEACHER, "--student", ",".join(STUDENTS), "--latency-budget", 1e-6, "--out", out
    )
    assert_one_line_error(
        result, "no candidate student runs within the 1e-06 ms budget", "nothing was trained", "--latency-budget"
    )
    assert "within budget" in result.stdout, "the table of every candidate comes with the error"
    assert not out.exists()


@pytest.fixture(scope="module")
def two_students(tmp_path_factory, monkeypatch_module):
    import gtcompress.pipeline as pipeline
    import gtcompress.train as train

    calls = []
    real = train.dataset_logits

    def counted(*a, **k):  # each call: whether it was over the training images (else the test split's, for a scale)
        calls.append(a[1] is not a[2].val_data)
        return real(*a, **k)

    for module in (train, pipeline):  # the students' logit cache, and the teachers' scale records
        monkeypatch_module.setattr(module, "dataset_logits", counted)
    out = tmp_path_factory.mktemp("students") / "run"
    result = invoke(
        "run",
        "--teacher",
        TEACHER,
        "--student",
        ",".join(STUDENTS),
        "--epochs",
        3,  # models that beat a guess: the recommendation never picks one at chance
        "--set",
        "teacher.train.lr=0.1",
        "--out",
        out,
        "--set",
        "data.train_fraction=0.5",
        "--gt-init",  # a GT fine-tuned from the ST: a better teacher after a few epochs than one from scratch
        "standard",
        "--cache-teacher-logits",
        "--latency-budget",
        1000,
        "--export-precision",
        "fp32,int8",
        "--tolerance",
        INT8_TOLERANCE,
        "--batch-sizes",
        "1,4",
        "--iters",
        3,
    )
    assert result.exit_code == 0, result.output
    return out, result, calls


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow
def test_teachers_are_trained_once_and_every_student_from_the_same_gt(two_students):
    out, _, calls = two_students
    metrics = json.loads((out / "metrics.json").read_text())
    names = [f"student_{arch}" for arch in STUDENTS]
    assert [k for k in metrics if k not in ("export", "export_rejected")] == [
        "standard_teacher",
        "generous_teacher",
        *names,
    ]
    assert all(metrics[n]["teacher_stage"] == "generous_teacher" for n in names)
    history = [json.loads(line)["stage"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert history.count("generous_teacher") == 3 and history.count("standard_teacher") == 3, "each trained once"
    assert sum(calls) == 2, "the ST's training logits for the GT, the GT's once for both students"
    assert len(calls) == 4, "and each teacher's test logits, once, for its logit-scale record"
    candidates = json.loads((out / "candidates.json").read_text())
    assert [c["arch"] for c in candidates["candidates"]] == list(STUDENTS) and candidates["budget_ms"] == 1000


@pytest.mark.slow
def test_every_student_is_exported_benched_and_on_the_front(two_students):
    out, result, _ = two_students
    metrics = json.loads((out / "metrics.json").read_text())
    paths = {r["path"] for r in metrics["export"]}
    assert {r["backend"] for r in metrics["export"]} >= {"onnxruntime"}
    for arch in STUDENTS:
        assert {f"export/student_{arch}.onnx", f"export/student_{arch}.int8.onnx"} <= paths
    bench = json.loads((out / "bench.json").read_text())
    assert {r["stage"] for r in bench["results"]} == {*(f"student_{a}" for a in STUDENTS), "generous_teacher"}
    report = json.loads((out / "report.json").read_text())
    points = report["pareto"]["points"]
    assert {(p["stage"], p["precision"]) for p in points} == {
        *((f"student_{a}", p) for a in STUDENTS for p in ("fp32", "int8")),
        ("generous_teacher", "fp32"),  # the teacher is a candidate too
    }
    pick = report["recommendation"]["pick"]
    assert pick["top1"] == max(p["top1"] for p in points) and pick["p50_ms"] <= 1000
    assert pick["file"] in paths and pick["backend"] == "onnxruntime"
    assert report["pareto"]["budget_ms"] == 1000 and pick["name"] in report["pareto"]["front"]
    assert report["pareto"]["budget_set_on"] is None, "checked on onnxruntime at batch 1, as the report measures"
    md = (out / "report.md").read_text()
    assert "## What to ship" in md and f"Recommended: {pick['name']}" in md
    assert f"Recommended: {pick['name']}" in result.stdout
    assert (out / "plots" / "pareto.png").is_file()


def test_a_budget_target_that_cannot_mean_what_it_says_is_refused(monkeypatch):
    import torch

    from gtcompress.candidates import target
    from gtcompress.config import BudgetConfig
    from gtcompress.errors import UserError

    assert target(BudgetConfig(device="cpu")) == ("onnxruntime", "fp32", "cpu")
    with pytest.raises(UserError, match="torch on cpu has no precision int8"):
        target(BudgetConfig(backend="torch", precision="int8", device="cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match="no int8 kernels"):
        target(BudgetConfig(backend="onnxruntime", precision="int8", device="cuda"))
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        target(BudgetConfig(backend="tensorrt", device="cpu"))


@pytest.mark.slow
def test_a_budget_checked_elsewhere_is_said_to_be(two_students):
    from gtcompress.report import build_report
    from gtcompress.rundir import RunDir

    out, _, _ = two_students
    report = build_report(RunDir(out), batch_size=4)
    assert report.pareto.budget_set_on == "onnxruntime fp32 at batch 1"
    assert all(p.p50_ms > 0 for p in report.pareto.points)


@pytest.mark.slow
def test_a_student_larger_than_its_teacher_is_not_recommended_and_the_report_says_so(tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "run", "--teacher", TEACHER, "--student", "resnet18", "--epochs", 3, "--set", "data.train_fraction=0.5",
        "--lr", 0.1, "--out", out, "--export-precision", "fp32", "--backend", "onnxruntime", "--batch-sizes", 1,
        "--iters", 20, "--threads", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["pareto"]["no_speed"].startswith("On onnxruntime at batch 1 the students buy no speed")
    pick = report["recommendation"]["pick"]
    assert pick["role"] == "teacher" and pick["stage"] == "generous_teacher"
    flat = " ".join(result.stdout.split())
    assert "the students buy no speed over the teacher" in flat and "Recommended: Generous Teacher" in flat
