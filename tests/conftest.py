import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub call would otherwise stall ~45 s without network

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from gtcompress.cli import app  # noqa: E402
from gtcompress.config import RunConfig  # noqa: E402
from gtcompress.stages import run_stages  # noqa: E402

TEACHER, STUDENT = "test_resnet", "mobilenetv3_small_050"
PAIR = ("--teacher", TEACHER, "--student", STUDENT)  # the tiny pair every CLI test trains
COMPARE_STAGES = run_stages(RunConfig(compare=True))  # a default --compare run's: the born-again arm, no continued


def invoke(*args: str):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def distill(*args: str):
    """`gtcompress distill --teacher TEACHER --student STUDENT *args`, in-process."""
    return invoke("distill", *PAIR, *args)


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """One small `distill --compare` run on digits, shared by every test that reads a run directory."""
    out = tmp_path_factory.mktemp("runs") / "run"
    result = distill(
        "--epochs", 2, "--compare", "--out", out, "--set", "data.train_fraction=0.5", "--set", "teacher.train.lr=0.1"
    )
    assert result.exit_code == 0, result.output
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# Student int8 agreement floor for the session's barely trained student (see tests/test_export.py).
INT8_TOLERANCE = "int8.min_agreement=50"
BENCH_ITERS, BENCH_BATCHES = 6, (1, 4)


@pytest.fixture(scope="session")
def workflow_run(pipeline_run, tmp_path_factory) -> Path:
    """The pipeline run taken through `gtcompress run --skip-distill`: exports, bench.json and the report."""
    run = copy_run(pipeline_run, tmp_path_factory.mktemp("workflow") / "run")
    result = invoke(
        "run",
        "--skip-distill",
        "--out",
        run,
        "--precision",
        "fp32,int8",
        "--tolerance",
        INT8_TOLERANCE,
        "--batch-sizes",
        ",".join(map(str, BENCH_BATCHES)),
        "--iters",
        BENCH_ITERS,
    )
    assert result.exit_code == 0, result.output
    return run
