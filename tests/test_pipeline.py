"""The distill pipeline end to end through the CLI, and the run-directory contracts other tools read."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    COMPARE_STAGES,
    PAIR,
    STUDENT,
    TEACHER,
    assert_recorded_accuracy_is_the_saved_models,
    copy_run,
    distill,
    interrupted,
    invoke,
)

from gtcompress.config import DataConfig
from gtcompress.data import load_splits
from gtcompress.models import load_model
from gtcompress.rundir import RunDir

STAGES = COMPARE_STAGES


def test_metrics_contract(pipeline_run):
    metrics = json.loads((pipeline_run / "metrics.json").read_text())
    assert list(metrics) == STAGES
    for stage in STAGES:
        m = metrics[stage]
        for key in ("arch", "top1", "top5", "params", "train_seconds", "epochs"):
            assert key in m, (stage, key)
        assert_recorded_accuracy_is_the_saved_models(m, pipeline_run / f"{stage}.pt")  # `gtcompress eval`'s path
        assert m["top1"] <= m["top5"]
        assert m["epochs"] == 2 and m["train_seconds"] > 0 and m["params"] > 0
    assert metrics["standard_teacher"]["arch"] == TEACHER
    assert metrics["student"]["arch"] == STUDENT
    assert metrics["student"]["teacher_stage"] == "generous_teacher"
    assert metrics["student_from_standard"]["teacher_stage"] == "standard_teacher"
    assert metrics["student_from_born_again"]["teacher_stage"] == "born_again_teacher"
    assert metrics["born_again_teacher"]["epochs"] == metrics["generous_teacher"]["epochs"]
    assert metrics["student_ce"]["method"] == "ce"
    assert metrics["standard_teacher"]["top1"] > 30, "the teacher learned nothing"


def test_history_contract(pipeline_run):
    lines = (pipeline_run / "history.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["stage"], r["epoch"]) for r in records] == [(s, e) for s in STAGES for e in (1, 2)]
    for r in records:
        for key in ("stage", "epoch", "train_loss", "top1", "seconds", "images_per_second"):
            assert key in r
    gt = [r for r in records if r["stage"] == "generous_teacher"]
    assert all("train_nckd" in r and "train_ce" in r for r in gt)


def test_config_records_the_resolved_run(pipeline_run):
    cfg = yaml.safe_load((pipeline_run / "config.yaml").read_text())
    assert cfg["teacher"]["arch"] == TEACHER and cfg["compare"] is True
    assert cfg["data"]["train_fraction"] == 0.5 and cfg["teacher"]["train"]["lr"] == 0.1
    env = cfg["environment"]
    assert env["world_size"] == 1 and env["device"] == "cpu"
    assert env["versions"]["torch"] == torch.__version__ and "timm" in env["versions"]


def test_checkpoints_rebuild_their_models_without_the_recipe(pipeline_run):
    splits = load_splits(DataConfig(name="digits"))
    for stage in STAGES:
        model, spec, ckpt = load_model(pipeline_run / f"{stage}.pt")
        assert spec.num_classes == 10 and spec.img_size == 32 and len(spec.mean) == 3
        assert spec.class_names == tuple(splits.class_names) and ckpt["stage"] == stage
        with torch.no_grad():
            assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert not (pipeline_run / "checkpoints").exists() or not list((pipeline_run / "checkpoints").iterdir())


def test_latest_points_at_the_run(pipeline_run):
    assert (pipeline_run.parent / "latest").resolve() == pipeline_run.resolve()


def test_every_student_arm_starts_from_the_same_weights(tmp_path):
    out = tmp_path / "run"
    result = distill("--epochs", 0, "--compare", "--out", out, "--gt-init", "scratch")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    losses = {stage: m["val_loss"] for stage, m in metrics.items()}
    assert losses["student"] == losses["student_from_standard"] == losses["student_ce"]
    assert losses["student"] == losses["student_from_born_again"]
    assert losses["standard_teacher"] != losses["generous_teacher"] == losses["born_again_teacher"]
    assert "continued_teacher" not in metrics and "student_from_continued" not in metrics
    assert result.output.count("skipped (the Generous Teacher is trained from scratch") == 1


@pytest.mark.slow
def test_continued_teacher_is_the_generous_teacher_without_its_term(tmp_path):
    # With beta = 0 the GT's path is CE alone from the ST: the control must then be the GT, bit for bit.
    out = tmp_path / "run"
    result = distill(
        "--epochs",
        1,
        "--compare",
        "--gt-init",
        "standard",
        "--gt-beta",
        0,
        "--out",
        out,
        "--set",
        "data.train_fraction=0.2",
    )
    assert result.exit_code == 0, result.output
    gt = torch.load(out / "generous_teacher.pt", weights_only=True)["state_dict"]
    ct = torch.load(out / "continued_teacher.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(gt[k], ct[k]) for k in gt)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["student"]["top1"] == metrics["student_from_continued"]["top1"]
    assert metrics["student"]["val_loss"] == metrics["student_from_continued"]["val_loss"]


def test_resume_of_a_complete_run_redoes_nothing(pipeline_run, tmp_path):
    run = copy_run(pipeline_run, tmp_path / "run")  # the shared run stays as it is for tests running beside this one
    before = {p.name: p.stat().st_mtime_ns for p in run.glob("*.pt")}
    result = invoke("distill", "--resume", "--out", run)
    assert result.exit_code == 0, result.output
    assert result.output.count("complete (top-1") == len(STAGES)
    assert {p.name: p.stat().st_mtime_ns for p in run.glob("*.pt")} == before


def test_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["distill", *PAIR, "--epochs", 2, "--out", out, "--set", "data.train_fraction=0.2"]
    result = interrupted(monkeypatch, "student", *args)
    assert result.exit_code == 130
    assert "--resume" in result.output
    assert set(json.loads((out / "metrics.json").read_text())) == {"standard_teacher", "generous_teacher"}
    teacher_mtime = (out / "standard_teacher.pt").stat().st_mtime_ns

    result = invoke("distill", "--resume", "--out", out)
    assert result.exit_code == 0, result.output
    assert "student: resuming after epoch 1/2" in result.output
    assert (out / "standard_teacher.pt").stat().st_mtime_ns == teacher_mtime
    history = RunDir(out).history()
    assert [(r["stage"], r["epoch"]) for r in history if r["stage"] == "student"] == [("student", 1), ("student", 2)]
    assert "student" in json.loads((out / "metrics.json").read_text())


def test_rerunning_the_starting_command_with_resume_finishes_it_like_an_uninterrupted_run(tmp_path, monkeypatch):
    args = ["distill", *PAIR, "--epochs", 2, "--set", "data.train_fraction=0.2"]
    assert invoke(*args, "--out", tmp_path / "whole").exit_code == 0
    assert interrupted(monkeypatch, "generous_teacher", *args, "--out", tmp_path / "cut").exit_code == 130
    result = invoke(*args, "--out", tmp_path / "cut", "--resume")
    assert result.exit_code == 0, result.output
    assert "generous_teacher: resuming after epoch 1/2" in result.output
    assert "generous_teacher epoch 1/2" not in result.output and "standard_teacher epoch" not in result.output
    for stage in ("standard_teacher", "generous_teacher", "student"):
        whole = torch.load(tmp_path / "whole" / f"{stage}.pt", weights_only=True)["state_dict"]
        cut = torch.load(tmp_path / "cut" / f"{stage}.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(whole[k], cut[k]) for k in whole), stage


def test_generous_teacher_can_start_from_the_standard_teacher(tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "distill",
        "--teacher",
        TEACHER,
        "--student",
        "test_efficientnet",
        "--epochs",
        1,
        "--gt-init",
        "standard",
        "--method",
        "dkd",
        "--out",
        out,
        "--set",
        "data.train_fraction=0.2",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["generous_teacher"]["init"] == "standard"
        and metrics["generous_teacher"]["source"] == "trained"
        and metrics["student"]["method"] == "dkd"
    )
    assert "Generous Teacher" in result.output and "student <- GT" in result.output


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "gtcompress", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "distill" in out.stdout


def test_teachers_of_one_run_teach_the_students_of_another(pipeline_run, tmp_path):
    out = tmp_path / "run"
    result = distill(
        "--epochs",
        1,
        "--method",
        "dist",
        "--teacher-checkpoint",
        pipeline_run / "standard_teacher.pt",
        "--set",
        f"generous.checkpoint={pipeline_run / 'generous_teacher.pt'}",
        "--out",
        out,
        "--set",
        "data.train_fraction=0.5",
        "--set",
        "student.dist.teacher_scale=match:standard_teacher",
    )
    assert result.exit_code == 0, result.output
    old = json.loads((pipeline_run / "metrics.json").read_text())
    new = json.loads((out / "metrics.json").read_text())
    for stage in ("standard_teacher", "generous_teacher"):
        assert new[stage]["source"] == "checkpoint" and new[stage]["epochs"] == 0
        assert new[stage]["top1"] == pytest.approx(old[stage]["top1"])
        scale = {k: v for k, v in new[stage]["logit_scale"].items() if k not in ("temperature", "entropy")}
        assert scale == pytest.approx({k: old[stage]["logit_scale"][k] for k in scale}, rel=1e-5), "a loaded teacher's"
        assert new[stage]["logit_scale"]["temperature"] == 1.0, "entropy at the DIST students' temperature"
    assert new["student"]["method"] == "dist" and new["student"]["epochs"] == 1
    # the GT's logits at the ST's scale: the ratio of their median per-image stds on the training split
    medians = {s: new[s]["logit_scale"]["train_std_median"] for s in ("standard_teacher", "generous_teacher")}
    assert new["student"]["teacher_scale"] == pytest.approx(medians["standard_teacher"] / medians["generous_teacher"])
    assert new["student"]["teacher_scale_match"] == "standard_teacher"
    assert yaml.safe_load((out / "config.yaml").read_text())["student"]["dist"]["teacher_scale"] == {
        "match": "standard_teacher"
    }, "the configuration keeps what was asked; the record, what it resolved to"


def test_every_teacher_records_its_logit_scale_and_no_student_does(pipeline_run):
    metrics = json.loads((pipeline_run / "metrics.json").read_text())
    for stage, m in metrics.items():
        if m["role"] == "student":
            assert "logit_scale" not in m and "teacher_scale" not in m, stage
            continue
        s = m["logit_scale"]
        assert 0 < s["std_median"] <= s["std_p95"] <= s["max_abs"] and s["train_std_median"] > 0, stage
        assert s["temperature"] == 4.0 and 0 < s["entropy"] <= s["log_classes"] == pytest.approx(math.log(10))


def test_matching_a_teacher_the_run_does_not_have_is_refused_before_anything_is_written(tmp_path):
    result = distill("--out", tmp_path / "r", "--set", "student.kd.teacher_scale=match:born_again_teacher")
    assert result.exit_code == 2
    assert "no such teacher stage (match one of standard_teacher, generous_teacher)" in result.output
    assert not (tmp_path / "r").exists()


def test_tensorboard_logs_every_stage_and_loss_term(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = distill("--epochs", 2, "--tensorboard", "--out", out, "--set", "data.train_fraction=0.2")
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "standard_teacher/train_ce",
        "generous_teacher/train_nckd",
        "generous_teacher/train_ce",
        "student/train_kd",
        "student/train_ce",
        "student/top1",
        "student/lr",
        "student/images_per_second",
    ):
        assert tag in tags, tag
    history = {(r["stage"], r["epoch"]): r for r in RunDir(out).history()}
    logged = events.Scalars("student/top1")
    assert [e.step for e in logged] == [1, 2]
    assert logged[1].value == pytest.approx(history[("student", 2)]["top1"], rel=1e-6)


def test_dry_run_builds_everything_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = distill("--compare", "--dry-run")
    assert result.exit_code == 0, result.output
    for stage in STAGES:
        assert f"{stage}: " in result.output
    assert "1437 train / 360 test images, 10 classes, batches of (64, 3, 32, 32)" in result.output
    assert not (tmp_path / "runs").exists()


def test_dry_run_of_a_recipe_without_its_data_is_a_clear_error(tmp_path):
    from pathlib import Path

    recipe = Path(__file__).parent.parent / "recipes" / "digits.yaml"
    result = invoke("distill", "--recipe", recipe, "--dataset", "cifar100", "--data-root", tmp_path, "--dry-run")
    assert result.exit_code == 2 and "--download" in result.stderr


@pytest.mark.slow
def test_compiled_training_saves_plain_checkpoints(tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "distill",
        "--teacher",
        "test_efficientnet",
        "--student",
        "test_efficientnet",
        "--epochs",
        1,
        "--compile",
        "--out",
        out,
        "--set",
        "data.train_fraction=0.1",
    )
    assert result.exit_code == 0, result.output
    for stage in ("standard_teacher", "generous_teacher", "student"):
        keys = torch.load(out / f"{stage}.pt", weights_only=True)["state_dict"]
        assert not any("_orig_mod" in k or k.startswith("module.") for k in keys)
        load_model(out / f"{stage}.pt")


@pytest.mark.slow
def test_paper_recipe_at_tiny_scale_trains_small_stem_models_that_export_and_verify(tmp_path):
    out = tmp_path / "run"
    tiny = ("data.synthetic.num_classes=10", "data.synthetic.train_per_class=6", "data.synthetic.val_per_class=3")
    sets = [
        a
        for s in (*tiny, "teacher.train.decay_milestones=[1]", "student.train.decay_milestones=[1]")
        for a in ("--set", s)
    ]
    recipe = Path(__file__).resolve().parent.parent / "recipes/paper_cifar100.yaml"
    result = invoke(
        "distill", "--recipe", recipe, "--teacher", TEACHER, "--dataset", "synthetic", "--epochs", 2,
        "--device", "cpu", "--precision", "fp32", "--out", out,
        "--set", "data.download=false", "--set", "data.workers=0", *sets,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for stage in ("standard_teacher", "generous_teacher", "student"):
        model, spec, _ = load_model(out / f"{stage}.pt")
        assert spec.small_stem and next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).stride == (1, 1)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    gt = [r for r in history if r["stage"] == "generous_teacher"]
    assert gt[0]["train_nckd"] == 0 and gt[1]["train_nckd"] > 0, "the authors' warm-up: epoch 0 is CE alone"
    assert gt[0]["lr"] == pytest.approx(0.1 * 0.2), "the GT takes the ST's multistep schedule"
    student = [r for r in history if r["stage"] == "student"]
    assert student[0]["lr"] == pytest.approx(0.02)
    result = invoke("export", out, "--export-precision", "fp32")
    assert result.exit_code == 0, result.output
    records = json.loads((out / "metrics.json").read_text())["export"]
    assert {r["path"] for r in records} == {"export/student.onnx"} and "onnxruntime" in {r["backend"] for r in records}
    for record in records:  # onnxruntime's verification, and OpenVINO's where it is installed
        assert record["max_abs_diff"] <= 1e-3 and record["top1_agreement"] == 100.0


def test_a_run_saved_before_the_scale_option_resumes_with_the_loss_it_trained_with(tmp_path):
    from gtcompress.config import RunConfig, dump_config
    from gtcompress.resolve import load_resumed

    for saved_scale, expected in ((None, "k_squared"), ("st_temperature", "st_temperature")):
        out = tmp_path / str(saved_scale)
        out.mkdir()
        tree = yaml.safe_load(dump_config(RunConfig()))
        if saved_scale is None:
            del tree["generous"]["scale"]  # as config.yaml was written before the option existed
        else:
            tree["generous"]["scale"] = saved_scale
        (out / "config.yaml").write_text(yaml.safe_dump(tree))
        cfg, _ = load_resumed(out, None, set())
        assert cfg.generous.scale == expected


def test_a_resolved_run_is_frozen_and_its_configuration_too(tmp_path):
    import dataclasses

    import pydantic
    from rich.console import Console

    from gtcompress.config import load_config
    from gtcompress.distributed import DistEnv
    from gtcompress.resolve import resolve

    asked = load_config(None, {"teacher.arch": "test_resnet", "student.arch": ["mobilenetv3_small"]})
    run = resolve(asked, DistEnv(), torch.device("cpu"), Console(file=open(tmp_path / "log", "w")), None, dry_run=True)
    assert run.cfg.student.arch == ["mobilenetv3_small_100"] and run.dir is None
    assert asked.student.arch == ["mobilenetv3_small"], "resolving makes a new configuration: the one asked for stays"
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.cfg = asked
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        run.cfg.student.arch = ["resnet18"]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        run.cfg.student.kd.temperature = 20.0
