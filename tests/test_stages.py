"""The stage registry: one student keeps today's names, several get one suffix each, controls included."""

import pytest
import timm
import torch
from timm.models import save_for_hf

from gtcompress import losses
from gtcompress.config import RunConfig
from gtcompress.files import write_json
from gtcompress.records import StageRecord
from gtcompress.rundir import RunDir
from gtcompress.stages import controls_of, deployable_teachers, distilled_students, run_stages, stages

FINE_TUNE = {"init": "standard", "train": {"epochs": 4}}


def names(**overrides):
    return run_stages(RunConfig.model_validate(overrides))


def test_one_student_keeps_the_contract_names():
    assert names() == ["standard_teacher", "generous_teacher", "student"]
    assert names(compare=True) == [  # the authors' GT from scratch: its control is the born-again teacher
        "standard_teacher",
        "generous_teacher",
        "born_again_teacher",
        "student",
        "student_from_standard",
        "student_from_born_again",
        "student_ce",
    ]
    assert names(compare=True, generous=FINE_TUNE) == [  # a fine-tuned GT: the continued teacher
        "standard_teacher",
        "generous_teacher",
        "continued_teacher",
        "student",
        "student_from_standard",
        "student_from_continued",
        "student_ce",
    ]
    assert names(compare=True, generous={"checkpoint": "gt.pt"}) == [
        "standard_teacher",
        "generous_teacher",
        "student",
        "student_from_standard",
        "student_ce",
    ]


def test_the_born_again_teacher_shares_the_gts_seed_schedule_and_path_but_not_its_knowledge():
    cfg = RunConfig.model_validate({"compare": True, "teacher": {"train": {"epochs": 6, "lr": 0.2}}})
    by = {s.name: s for s in stages(cfg)}
    gt, ba = by["generous_teacher"], by["born_again_teacher"]
    assert gt.seed_offset == ba.seed_offset and gt.teacher == ba.teacher == "standard_teacher"
    assert gt.train(cfg) == ba.train(cfg) == cfg.teacher.train  # from scratch with the ST's schedule
    g = torch.Generator().manual_seed(0)
    s, t, y = (
        torch.randn(8, 10, generator=g),
        torch.randn(8, 10, generator=g) * 3,
        torch.randint(0, 10, (8,), generator=g),
    )
    got = ba.objective(cfg)(s, t, y, 5.0)
    assert got["nckd"].item() == pytest.approx(losses.kd_loss(s, t, 4.0).item(), rel=1e-5)  # plain KD at T = 4
    assert got["ce"].item() == pytest.approx(gt.objective(cfg)(s, t, y, 5.0)["ce"].item())


def test_several_students_each_get_their_stages_and_controls_after_the_teachers_trained_once():
    got = names(compare=True, generous=FINE_TUNE, student={"arch": ["lcnet_050", "resnet18.a1_in1k"]})
    assert got[:3] == ["standard_teacher", "generous_teacher", "continued_teacher"]
    assert got[3:] == [
        f"{base}_{arch}"
        for arch in ("lcnet_050", "resnet18_a1_in1k")
        for base in ("student", "student_from_standard", "student_from_continued", "student_ce")
    ]
    cfg = RunConfig.model_validate({"student": {"arch": ["lcnet_050", "resnet18"]}})
    assert [s.arch(cfg) for s in stages(cfg) if s.skip(cfg) is None][2:] == ["lcnet_050", "resnet18"]


def test_each_stage_carries_its_identity_as_fields():
    cfg = RunConfig.model_validate({"compare": True, "student": {"arch": ["lcnet_050", "resnet18"]}})
    by = {s.name: s.identity() for s in stages(cfg)}
    assert by["standard_teacher"] == {"title": "Standard Teacher", "role": "standard", "teacher_stage": None,
                                      "student": None, "qat": None}  # fmt: skip
    assert by["born_again_teacher"]["role"] == "control" and by["generous_teacher"]["role"] == "generous"
    assert by["student_from_standard_lcnet_050"] == {
        "title": "student <- ST (lcnet_050)",
        "role": "student",
        "teacher_stage": "standard_teacher",
        "student": "lcnet_050",
        "qat": None,
    }
    assert by["student_ce_resnet18"]["teacher_stage"] is None and by["student_ce_resnet18"]["student"] == "resnet18"
    assert by["student_qat_lcnet_050"] == {
        "title": "student <- GT QAT (lcnet_050)",
        "role": "student",
        "teacher_stage": "generous_teacher",
        "student": "lcnet_050",
        "qat": True,
    }


def _record(**identity):
    return StageRecord(arch="resnet18", top1=1.0, epochs=1, train_seconds=1.0, params=1, **identity)


def test_students_controls_and_teachers_are_found_by_their_fields_not_their_names():
    records = {
        "standard_teacher": _record(role="standard"),
        "generous_teacher": _record(role="generous"),
        "x": _record(role="student", student="a", teacher_stage="generous_teacher"),
        "y": _record(role="student", student="a", teacher_stage="standard_teacher"),
        "z": _record(role="student", student="b", teacher_stage="standard_teacher"),
        "w": _record(role="student", student="a"),
    }
    assert distilled_students(records) == ["x"]
    assert controls_of(records, "x") == {"standard_teacher": "y"}, "the same student's controls only"
    assert controls_of(records, "standard_teacher") == {}
    assert deployable_teachers(records) == ["generous_teacher", "standard_teacher"]


def test_the_run_reads_back_the_stages_it_recorded_and_nothing_else(tmp_path):
    run = RunDir(tmp_path)
    write_json(run.metrics_path, {"export": [], "unfinished": {}})
    run.write_stage("a", _record(role="student", student="s", method="kd"))
    assert list(run.stage_records()) == ["a"]
    assert run.stage_records()["a"] == _record(role="student", student="s", method="kd")
    assert "teacher_stage" not in run.metrics()["a"], "what does not apply is not written"


def test_a_run_records_identities_and_an_older_run_gets_them_from_its_configuration(pipeline_run, tmp_path):
    import json
    import shutil

    from gtcompress.stages import stage_records

    metrics = json.loads((pipeline_run / "metrics.json").read_text())
    assert metrics["student_from_born_again"]["role"] == "student"
    assert metrics["student_from_born_again"]["teacher_stage"] == "born_again_teacher"
    old = tmp_path / "old"
    shutil.copytree(pipeline_run, old, symlinks=True)
    for m in (v for v in metrics.values() if isinstance(v, dict)):
        for key in ("title", "role", "student"):
            m.pop(key, None)
    (old / "metrics.json").write_text(json.dumps(metrics))
    records = stage_records(RunDir(old))
    assert records == stage_records(RunDir(pipeline_run))


def test_a_local_student_is_named_by_its_folder_and_recorded_by_its_architecture(tmp_path):
    folder = tmp_path / "my-student.v1"
    save_for_hf(timm.create_model("test_resnet", num_classes=10), folder, safe_serialization=True)
    name = f"local-dir:{folder}"
    cfg = RunConfig.model_validate({"student": {"arch": [name, "lcnet_050"]}})
    students = [s for s in stages(cfg) if s.skip(cfg) is None][2:]
    assert [s.name for s in students] == ["student_my_student_v1", "student_lcnet_050"]
    assert students[0].arch(cfg) == "test_resnet" and students[0].record(cfg)["source"] == name
    assert "source" not in students[1].record(cfg)
