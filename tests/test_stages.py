"""The stage registry: one student keeps today's names, several get one suffix each, controls included."""

import pytest
import timm
import torch
from timm.models import save_for_hf

from gtcompress import losses
from gtcompress.config import RunConfig
from gtcompress.stages import distilled_students, is_stage, run_stages, sibling, stages, title, trained

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


def test_titles_siblings_and_names_of_suffixed_stages():
    assert title("student_ce_lcnet_050", "lcnet_050") == "student (CE only) (lcnet_050)"
    assert title("student") == "student <- GT" and title("export") == "export"
    assert sibling("student_lcnet_050", "student_from_standard") == "student_from_standard_lcnet_050"
    assert sibling("student", "student_from_continued") == "student_from_continued"
    assert is_stage("student_from_continued_lcnet_050") and not is_stage("teacher")
    metrics = {
        "standard_teacher": {"top1": 1.0},
        "student_a": {"top1": 2.0, "teacher_stage": "generous_teacher"},
        "student_from_standard_a": {"top1": 3.0, "teacher_stage": "standard_teacher"},
        "export": [],
    }
    assert trained(metrics) == ["standard_teacher", "student_a", "student_from_standard_a"]
    assert distilled_students(metrics) == ["student_a"]


def test_a_local_student_is_named_by_its_folder_and_recorded_by_its_architecture(tmp_path):
    folder = tmp_path / "my-student.v1"
    save_for_hf(timm.create_model("test_resnet", num_classes=10), folder, safe_serialization=True)
    name = f"local-dir:{folder}"
    cfg = RunConfig.model_validate({"student": {"arch": [name, "lcnet_050"]}})
    students = [s for s in stages(cfg) if s.skip(cfg) is None][2:]
    assert [s.name for s in students] == ["student_my_student_v1", "student_lcnet_050"]
    assert students[0].arch(cfg) == "test_resnet" and students[0].record(cfg)["source"] == name
    assert "source" not in students[1].record(cfg)
