"""The stage registry: one student keeps today's names, several get one suffix each, controls included."""

from gtcompress.config import RunConfig
from gtcompress.stages import STAGE_NAMES, distilled_students, is_stage, sibling, stages, title, trained


def names(**overrides):
    cfg = RunConfig.model_validate(overrides)
    return [s.name for s in stages(cfg) if s.skip(cfg) is None]


def test_one_student_keeps_the_contract_names():
    assert names() == ["standard_teacher", "generous_teacher", "student"]
    assert names(compare=True) == list(STAGE_NAMES)
    assert names(compare=True, generous={"init": "scratch"}) == [
        "standard_teacher",
        "generous_teacher",
        "student",
        "student_from_standard",
        "student_ce",
    ]


def test_several_students_each_get_their_stages_and_controls_after_the_teachers_trained_once():
    got = names(compare=True, student={"arch": ["lcnet_050", "resnet18.a1_in1k"]})
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
