"""Bad input: one clear line on stderr naming the fix, exit code 2, no traceback, nothing lost."""

import ast
import inspect
import re
import shlex
from pathlib import Path

import click
import pytest
import torch
import yaml
from conftest import STUDENT, TEACHER, assert_one_line_error, distill, invoke

import gtcompress
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


def _commands():
    import typer.main

    from gtcompress.cli import app

    return typer.main.get_command(app)


def _options(command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def test_run_takes_every_option_of_distill_export_and_bench_and_each_means_the_same():
    commands = _commands().commands
    run, distill, export, bench = (commands[n] for n in ("run", "distill", "export", "bench"))
    for other, own in ((distill, set()), (export, {"--stage", "--model", "--checkpoint", "--dataset", "--data-root",
                                                    "--out", "--triton", "--precision", "--qat"}),
                       (bench, {"--precision", "--stage", "--model"})):  # fmt: skip
        assert _options(other) - own <= _options(run), other.name
        helps = {p.name: p.help for p in run.params}
        mine = {name.lstrip("-").replace("-", "_") for name in own} | {"backend", "out", "dry_run"}
        shared = [p for p in other.params if p.name in helps and p.name not in mine]
        assert [p.name for p in shared if helps[p.name] != p.help] == [], other.name
    training = next(p for p in run.params if "--precision" in p.opts)
    assert "training autocast" in training.help, "--precision is training's in run as in distill"


def test_export_qat_shows_no_default_that_export_would_refuse(monkeypatch):
    """distill's --qat defaults to 0 (none); export's adds QAT to a finished run and refuses 0, so it shows none."""
    (qat,) = [p for p in _commands().commands["export"].params if p.name == "qat"]
    assert "0: none" not in qat.help and "quantization-aware" in qat.help
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    shown = invoke("export", "--help").stdout
    line = next(line for line in shown.splitlines() if "--qat" in line)
    assert "[default" not in line, line


def test_every_option_a_group_declares_takes_its_help_from_the_field_it_sets():
    from gtcompress.options import bench_group, export_group
    from gtcompress.settings import BenchConfig, ExportConfig
    from gtcompress.typed import field_help

    fields = {bench_group: (BenchConfig, {"bench_device": "device"}), export_group: (ExportConfig, {
        "export_precision": "precisions", "tolerance": None, "trt": None})}  # fmt: skip
    for group, (cls, renamed) in fields.items():
        for name, param in inspect.signature(group, eval_str=True).parameters.items():
            key = renamed.get(name, name)
            if key is not None:
                assert param.annotation.__metadata__[0].help == field_help(cls, key) != "", (group.__name__, name)


def test_run_dry_run_says_every_step_writes_nothing_and_exits_0(tmp_path):
    result = invoke("run", "--teacher", TEACHER, "--student", STUDENT, "--dry-run", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    for step in ("standard_teacher:", "then export student", "then bench", "then write the report"):
        assert step in result.stdout, step
    assert "next:" not in result.stdout and not (tmp_path / "r").exists()


def test_runs_precision_is_training_autocast_as_distills(tmp_path, monkeypatch):
    """`--precision` means the training autocast in run as in distill: bf16 trains in bf16 on a CPU with bf16
    instructions and is refused, with the reason, on one without (whatever this host has); the export precisions
    are `--export-precision`."""
    import gtcompress.distributed as distributed

    for command in ("run", "distill"):
        monkeypatch.setattr(distributed, "cpu_features", lambda: ["avx2", "avx512f", "avx512_bf16"])
        result = invoke(command, "--precision", "bf16", "--dry-run", "--out", tmp_path / command)
        assert result.exit_code == 0, result.output
        assert "global batch 64, bf16 on cpu" in result.stdout and "fp32 on" not in result.stdout
        monkeypatch.setattr(distributed, "cpu_features", lambda: ["avx2", "f16c", "avx512f", "avx512_vnni"])
        result = invoke(command, "--precision", "bf16", "--dry-run", "--out", tmp_path / command)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "bf16 training on a CPU needs its bf16 instructions (avx512_bf16 or amx_bf16)" in result.output
        assert "use --precision fp32 here, or bf16 on a CUDA device" in result.output


def test_debug_is_taken_after_the_command_too(tmp_path):
    from typer.testing import CliRunner

    from gtcompress.cli import app
    from gtcompress.errors import UserError

    with pytest.raises(UserError, match="no gtcompress run"):  # the traceback's error, not one line and exit 2
        CliRunner().invoke(app, ["report", str(tmp_path / "none"), "--debug"], catch_exceptions=False)


def test_every_option_an_error_hint_or_the_code_names_exists():
    """An --option named anywhere in the package's strings (hints, help, messages) is one the CLI has, or another
    program's, listed here."""
    commands = _commands()
    known = set().union(*(_options(c) for c in commands.commands.values()), _options(commands))
    others = {"--help", "--alpha", "--query-gpu", "--format", "--use"}  # the authors' code, nvidia-smi, trtexec
    named = {}
    for path in Path(gtcompress.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", node.value):
                    named.setdefault(option, path.name)
    assert {o: p for o, p in named.items() if o not in known | others} == {}


def test_every_gtcompress_command_in_the_readme_parses():
    commands = _commands()
    readme = (Path(gtcompress.__file__).parent.parent / "README.md").read_text().replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in readme.splitlines()]
    calls = [line for line in lines if line.startswith("gtcompress ") and "…" not in line and "|" not in line]
    assert len(calls) > 20
    for call in calls:
        name, *args = shlex.split(call)[1:]
        command = commands.commands[name]
        try:
            command.make_context(name, [a for a in args if a != "--help"], parent=None)
        except click.exceptions.UsageError as e:
            raise AssertionError(f"README: `{call}`: {e}") from None


def test_the_command_line_answers_help_without_importing_the_stack():
    """`gtcompress --help` must not wait ~5 s for torch and timm (benchmarks/cli_help.py times the difference)."""
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; from gtcompress.cli import app; "
        "[CliRunner().invoke(app, a) for a in (['--help'], ['distill', '--help'], ['run', '--help'])]; "
        "print(sorted(m for m in ('torch', 'timm', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
