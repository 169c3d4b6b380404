"""`gtcompress run`: distill -> export -> bench -> report in one command, resumable, with distill's options."""

import json

import pytest
from conftest import INT8_TOLERANCE, PAIR, TEACHER, assert_one_line_error, invoke


@pytest.mark.slow
def test_run_does_the_whole_workflow_and_resumes_without_redoing_it(tmp_path):
    out = tmp_path / "run"
    args = ["--export-precision", "fp32,int8", "--tolerance", INT8_TOLERANCE, "--batch-sizes", "1", "--iters", 3]
    result = invoke("run", *PAIR, "--epochs", 1, "--out", out, "--set", "data.train_fraction=0.25", *args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"standard_teacher", "generous_teacher", "student"} <= metrics.keys()
    assert metrics["student"]["epochs"] == 1  # the distill option reached distill
    assert {r["path"] for r in metrics["export"]} == {
        "export/student.onnx",
        "export/student.int8.onnx",
        "export/generous_teacher.onnx",
    }
    assert (out / "bench.json").is_file() and (out / "report.html").is_file()
    assert "gtcompress report" in result.stdout and "wrote" in result.stdout

    onnx_mtime = (out / "export" / "student.onnx").stat().st_mtime
    again = invoke("run", "--resume", "--out", out, *args)
    assert again.exit_code == 0, again.output
    assert "student: exports are up to date" in again.stdout
    assert "generous_teacher: exports are up to date" in again.stdout
    assert (out / "export" / "student.onnx").stat().st_mtime == onnx_mtime
    assert [json.loads(line)["stage"] for line in (out / "history.jsonl").read_text().splitlines()].count(
        "student"
    ) == 1  # no stage trained twice


def test_run_checks_its_own_options_before_training(tmp_path):
    assert_one_line_error(
        invoke("run", "--teacher", TEACHER, "--batch-sizes", "0", "--out", tmp_path / "r"), "positive integers"
    )
    assert_one_line_error(
        invoke("run", "--export-precision", "int4", "--out", tmp_path / "r"), "unknown precision 'int4'"
    )
    assert not (tmp_path / "r").exists()


def test_skip_distill_takes_no_distill_options(pipeline_run):
    assert_one_line_error(
        invoke("run", "--skip-distill", "--out", pipeline_run, "--teacher", "resnet50"),
        "--skip-distill takes no distill options",
    )


def test_unknown_options_are_refused_by_distill(tmp_path):
    result = invoke("run", "--teacher", TEACHER, "--no-such-option", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "No such option" in result.output


@pytest.mark.slow
def test_run_goes_on_without_a_precision_that_fails_verification(pipeline_run, tmp_path):
    from conftest import copy_run

    from gtcompress.export.exporter import onnx_verifiers

    run = copy_run(pipeline_run, tmp_path / "run")
    args = [
        "--skip-distill",
        "--out",
        run,
        "--export-precision",
        "fp32,int8",
        "--tolerance",
        "int8.min_agreement=100.5",
    ]
    result = invoke("run", *args, "--batch-sizes", "1", "--iters", 3)
    assert result.exit_code == 0, result.output
    assert "not kept: student.int8.onnx failed verification" in result.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    verdicts = sorted((r["path"], r["backend"]) for r in metrics["export_rejected"])
    assert verdicts == sorted(("export/student.int8.onnx", s.name) for s in onnx_verifiers()), "one per runtime"
    assert not (run / "export" / "student.int8.onnx").exists()
    assert "export/student.onnx" in {r["path"] for r in metrics["export"]}
    notes = json.loads((run / "report.json").read_text())["notes"]
    assert any(n.startswith("not kept on onnxruntime: student.int8.onnx failed verification") for n in notes)
    again = invoke("run", *args, "--skip-bench")
    assert again.exit_code == 0 and "student: exports are up to date" in again.stdout, "not retried in vain"
