"""A damaged run file is one line naming the file, what is wrong and the command that fixes it; that command
works, and the command that failed has overwritten nothing (the report files of before are as they were)."""

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, copy_run, invoke

from gtcompress.errors import UserError
from gtcompress.rundir import RunDir


@pytest.fixture(scope="module")
def reported(pipeline_run, tmp_path_factory) -> Path:
    """The pipeline run with its report written: the files a refused command must leave as they are."""
    run = copy_run(pipeline_run, tmp_path_factory.mktemp("reported") / "run")
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run(reported, tmp_path) -> Path:
    return copy_run(reported, tmp_path / "run").resolve()


def report_files(run: Path) -> dict[str, bytes]:
    paths = [run / name for name in ("report.md", "report.json", "report.html")] + sorted(run.glob("plots/*.png"))
    return {p.name: p.read_bytes() for p in paths}


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def edit_metrics(run: Path, change) -> None:
    m = metrics(run)
    change(m)
    (run / "metrics.json").write_text(json.dumps(m))


def cut_off(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def junk_line(run: Path) -> None:
    lines = (run / "history.jsonl").read_text().splitlines(keepends=True)
    (run / "history.jsonl").write_text("".join([*lines[:2], "not json at all\n", *lines[2:]]))


# Each damage a user has met: what it does to the run, and what its one line must say.
DAMAGE = {
    "metrics.json a list": (
        lambda run: (run / "metrics.json").write_text("[]"),
        "metrics.json is damaged: it holds a list where an object is expected",
    ),
    "a stage's top1 a word": (
        lambda run: edit_metrics(run, lambda m: m["student"].update(top1="high")),
        "metrics.json is damaged: 'student.top1' input should be a valid number",
    ),
    "metrics.json an empty object": (
        lambda run: (run / "metrics.json").write_text("{}"),
        "metrics.json is damaged: it has no record of standard_teacher, generous_teacher",
    ),
    "metrics.json cut off": (lambda run: cut_off(run / "metrics.json"), "metrics.json is damaged: not valid JSON ("),
    "metrics.json deleted": (
        lambda run: (run / "metrics.json").unlink(),
        "metrics.json is damaged: it is missing, but the checkpoints of standard_teacher",
    ),
    "a junk line in history.jsonl": (junk_line, "history.jsonl is damaged: line 3 is not an epoch's JSON record"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_is_one_line_whose_repair_makes_the_run_report_again(run, damage):
    make, says = DAMAGE[damage]
    stages, before = metrics(run), report_files(run)
    make(run)
    assert_one_line_error(invoke("report", run), says, f"gtcompress repair {run})")
    assert report_files(run) == before, "the refused report overwrote the old one"
    assert_one_line_error(invoke("distill", "--resume", "--out", run), says, f"gtcompress repair {run})")

    repaired = invoke("repair", run)
    assert repaired.exit_code == 0, repaired.output
    assert f"next: gtcompress report {run}" in repaired.stdout
    assert metrics(run) == stages, "the checkpoints' records are metrics.json's"
    again = invoke("report", run)
    assert again.exit_code == 0, again.output
    assert json.loads((run / "report.json").read_text())["rows"]


def test_repair_says_how_many_history_lines_it_dropped_and_leaves_a_sound_metrics_json(run):
    junk_line(run)
    (run / "history.jsonl").write_text((run / "history.jsonl").read_text() + '{"stage": "student", "epo')
    metrics_before = (run / "metrics.json").read_bytes()
    result = invoke("repair", run)
    assert result.exit_code == 0, result.output
    assert "history.jsonl: dropped 2 unreadable line(s) (3, " in result.stdout
    assert "metrics.json reads and records every finished stage: left as it is" in result.stdout
    assert (run / "metrics.json").read_bytes() == metrics_before
    assert all(r["stage"] and r["epoch"] for r in RunDir(run).history())


def test_a_resume_refused_for_a_cut_off_metrics_json_continues_after_the_repair(run):
    history = (run / "history.jsonl").read_bytes()
    cut_off(run / "metrics.json")
    resume = ("distill", "--resume", "--out", run)
    assert_one_line_error(invoke(*resume), "metrics.json is damaged", f"gtcompress repair {run})")
    assert invoke("repair", run).exit_code == 0
    resumed = invoke(*resume)
    assert resumed.exit_code == 0, resumed.output
    assert "student: complete" in resumed.stdout
    assert (run / "history.jsonl").read_bytes() == history, "no stage was trained again"


# A valid record of one verified artefact, as `gtcompress export` writes it.
EXPORT = {
    "stage": "student",
    "format": "onnx",
    "backend": "onnxruntime",
    "precision": "fp32",
    "path": "export/student.onnx",
    "bytes": 1000,
    "top1": 90.0,
    "reference_top1": 90.0,
    "top1_agreement": 100.0,
    "max_abs_diff": 1e-6,
    "export_seconds": 1.0,
    "test_images": 360,
}


def test_repair_keeps_export_records_that_read(run):
    stages = metrics(run)

    def damage(m: dict) -> None:
        m.update(export=[EXPORT], export_rejected=[])
        m["student"]["top1"] = "high"

    edit_metrics(run, damage)
    result = invoke("repair", run)
    assert result.exit_code == 0, result.output
    assert metrics(run) == {**stages, "export": [EXPORT], "export_rejected": []}
    assert "gtcompress export" not in result.stdout


def test_an_export_list_that_does_not_read_is_dropped_and_export_named_to_verify_again(run):
    before = report_files(run)
    edit_metrics(run, lambda m: m.update(export=[], export_rejected=[{"path": "export/student.int8.onnx"}]))
    fix = f"drop it with gtcompress repair {run}; then gtcompress export verifies the files again"
    assert_one_line_error(invoke("report", run), "is damaged: 'export_rejected.0.reason' field required", fix)
    assert report_files(run) == before
    result = invoke("repair", run)
    assert result.exit_code == 0, result.output
    assert "its export_rejected records did not read, dropped" in result.stdout
    assert f"gtcompress export {run}" in result.stdout
    assert "export_rejected" not in metrics(run) and metrics(run)["export"] == []
    assert invoke("report", run).exit_code == 0


def test_an_unreadable_checkpoint_is_left_out_and_the_resume_named_to_train_it_again(run):
    (run / "metrics.json").write_text("[]")
    cut_off(run / "student_ce.pt")
    result = invoke("repair", run)
    assert result.exit_code == 0, result.output
    assert "student_ce.pt is not a readable checkpoint" in result.stdout and "left out" in result.stdout
    assert "student_ce" not in metrics(run) and "student" in metrics(run)
    assert (run / "student_ce.pt.damaged").is_file() and not (run / "student_ce.pt").exists()
    assert f"next: gtcompress distill --resume --out {run}" in result.stdout


def test_a_run_without_a_finished_stage_is_refused_with_the_resume_that_trains_it(run):
    for checkpoint in run.glob("*.pt"):
        checkpoint.unlink()
    (run / "metrics.json").write_text("{}")
    before = report_files(run)
    assert_one_line_error(invoke("report", run), "has no finished stage", f"gtcompress distill --resume --out {run}")
    assert report_files(run) == before


BENCH = ("--backend", "torch", "--batch-sizes", "1", "--iters", 2, "--warmup", 0, "--threads", 1)


def test_a_damaged_bench_json_is_measured_again(run):
    before = report_files(run)
    (run / "bench.json").write_text("[]")
    says = "bench.json is damaged: it holds a list where an object is expected"
    assert_one_line_error(invoke("report", run), says, f"gtcompress bench {run})")
    assert report_files(run) == before
    assert invoke("bench", run, *BENCH).exit_code == 0
    assert invoke("report", run).exit_code == 0


def test_a_damaged_candidates_json_is_deleted(run):
    before = report_files(run)
    (run / "candidates.json").write_text(json.dumps({"budget_ms": "soon"}))
    assert_one_line_error(invoke("report", run), "candidates.json is damaged: 'budget_ms' ", "delete it")
    assert report_files(run) == before
    (run / "candidates.json").unlink()
    assert invoke("report", run).exit_code == 0


def test_a_damaged_report_json_is_written_again(run):
    (run / "report.json").write_text('{"header": {"run": "x"}, "rows": 3}')
    with pytest.raises(UserError, match=r"report.json is damaged: 'header.command' field required \(") as e:
        RunDir(run).report()
    assert e.value.hint == f"write it again: gtcompress report {run}"
    assert invoke("report", run).exit_code == 0
    assert RunDir(run).report().rows


def test_a_damaged_config_yaml_is_one_line(run):
    before = report_files(run)
    (run / "config.yaml").write_text("- a list\n")
    says = "config.yaml is damaged: it holds a list where a mapping is expected"
    assert_one_line_error(invoke("report", run), says, "restore it from a copy")
    (run / "config.yaml").write_text("seed: [\n")
    assert_one_line_error(invoke("distill", "--resume", "--out", run), "config.yaml is damaged: not valid YAML (")
    assert report_files(run) == before
