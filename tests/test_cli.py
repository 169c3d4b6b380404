"""Bad input: one clear line on stderr naming the fix, exit code 2, no traceback, nothing lost."""

import pytest
import torch
import yaml
from conftest import STUDENT, TEACHER, assert_one_line_error, distill, invoke

from gtcompress.models import create_model


def test_unknown_model_suggests(tmp_path):
    result = invoke("distill", "--student", "mobilenetv4_smal", "--out", tmp_path / "r")
    assert_one_line_error(result, "unknown timm model", "did you mean", "mobilenetv4_conv_small")
    assert not (tmp_path / "r").exists()


def test_missing_data_path(tmp_path):
    result = distill("--dataset", f"imagefolder:{tmp_path}/nope", "--out", tmp_path / "r")
    assert_one_line_error(result, "does not exist")


def test_recipe_with_unknown_and_ill_typed_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"student": {"temperature": 4}}))
    assert_one_line_error(invoke("distill", "--recipe", recipe), "unknown key 'student.temperature'")
    recipe.write_text(yaml.safe_dump({"teacher": {"train": {"lr": "fast"}}}))
    assert_one_line_error(invoke("distill", "--recipe", recipe), "'teacher.train.lr'")


def test_teacher_checkpoint_with_the_wrong_class_count(tmp_path):
    torch.save(create_model(TEACHER, 1000).state_dict(), tmp_path / "in1k.pth")
    result = distill("--teacher-checkpoint", tmp_path / "in1k.pth", "--out", tmp_path / "r")
    assert_one_line_error(result, "1000 classes but the data set has 10", "--pretrained")


def test_resume_without_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke("distill", "--resume"), "no gtcompress run at runs/latest")
    assert_one_line_error(invoke("distill", "--resume", "--out", tmp_path / "x"), "no gtcompress run")


def test_resume_refuses_options_that_differ_and_names_both_values(pipeline_run):
    result = invoke("distill", "--resume", "--out", pipeline_run, "--epochs", 3, "--teacher", TEACHER)
    assert_one_line_error(
        result, "saved configuration", "teacher.train.epochs: 3 here, 2 saved", "student.train.epochs: 3 here, 2 saved"
    )
    assert "teacher.arch" not in result.stderr, "an option that agrees is accepted"


def test_pretrained_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke("distill", "--teacher", "resnet18", "--student", STUDENT, "--pretrained", "--out", tmp_path / "r")
    assert_one_line_error(result, "could not load pretrained weights for resnet18", "internet")


def test_a_new_run_never_overwrites_an_old_one(pipeline_run):
    before = {p.name: p.read_bytes() for p in pipeline_run.iterdir() if p.is_file()}
    result = distill("--out", pipeline_run)
    assert_one_line_error(result, "already holds a run", "--resume")
    assert {p.name: p.read_bytes() for p in pipeline_run.iterdir() if p.is_file()} == before


def test_debug_shows_the_traceback(tmp_path):
    from gtcompress.errors import UserError

    result = invoke("--debug", "distill", "--student", "nonsense_model_xyz", "--out", tmp_path / "r")
    assert isinstance(result.exception, UserError), result.exception
    assert "unknown timm model 'nonsense_model_xyz'" in str(result.exception)
    assert result.exc_info[2].tb_next is not None, "the traceback reaches into gtcompress"


@pytest.mark.parametrize("arg", ["--set", "--set=novalue"])
def test_malformed_set(arg):
    args = ["distill", arg, "novalue"] if arg == "--set" else ["distill", arg]
    assert_one_line_error(invoke(*args), "KEY=VALUE")


def test_models_lists_and_filters():
    result = invoke("models", "mobilenetv3_small")
    assert result.exit_code == 0 and "mobilenetv3_small_050" in result.stdout and "resnet50" not in result.stdout
    assert_one_line_error(invoke("models", "zzz_no_such"), "no timm model matches")


def test_say_prints_brackets_as_they_are():
    from rich.console import Console

    from gtcompress.terminal import say

    out = Console(record=True, width=200)
    say("wrote runs/x[1]/report.md; pip install 'gtcompress[trt]' [yellow]", to=out)
    assert out.export_text().strip() == "wrote runs/x[1]/report.md; pip install 'gtcompress[trt]' [yellow]"
