"""DDP under torchrun (gloo on CPU): a real 2-process job, rank agreement on errors, sharded teacher logits."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from conftest import COMPARE_STAGES, PAIR, STUDENT, TEACHER, assert_recorded_accuracy_is_the_saved_models

from gtcompress.config import DataConfig, RunConfig, SyntheticConfig
from gtcompress.data import Transformed, build_transform, load_splits
from gtcompress.distributed import DistEnv, resolve_device, sync_batchnorm
from gtcompress.errors import UserError
from gtcompress.models import create_model
from gtcompress.rundir import RunDir
from gtcompress.train import Context, dataset_logits

TIMEOUT = 240


def torchrun(*args, nproc=2, entry=("-m", "gtcompress"), env=None):
    """`torchrun --nproc-per-node N <entry> args`: gtcompress, or a script that wraps it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    cmd = [*launcher, "--master-port", str(free_port()), *entry, *map(str, args)]
    # its own session: torchrun signals its workers' process groups as it stops them, never the test's
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, start_new_session=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = torchrun(
        "distill",
        *PAIR,
        "--epochs",
        2,
        "--out",
        out,
        "--set",
        "data.train_fraction=0.3",
        "--cache-teacher-logits",
        "--compare",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


def test_two_process_run_meets_the_contract(ddp_run):
    out, result = ddp_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == COMPARE_STAGES, "every stage, the born-again teacher included"
    for stage, m in metrics.items():  # accuracy reduced over the two ranks' shards = the saved file's, in one process
        assert_recorded_accuracy_is_the_saved_models(m, out / f"{stage}.pt")
        assert m["epochs"] == 2
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in history] == [(s, e) for s in COMPARE_STAGES for e in (1, 2)]
    assert yaml.safe_load((out / "config.yaml").read_text())["environment"]["world_size"] == 2
    assert result.stdout.count("gtcompress distill") == 1, "only rank 0 prints"
    assert result.stdout.count("run directory:") == 1


@pytest.mark.slow
def test_two_process_resume_of_a_finished_run_redoes_nothing(ddp_run):
    out, _ = ddp_run
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.pt")}
    result = torchrun("distill", "--resume", "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("complete (top-1") == len(COMPARE_STAGES)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.pt")} == before


@pytest.mark.slow
def test_a_batch_the_world_size_does_not_divide_fails_on_every_rank(tmp_path):
    result = torchrun(
        "distill",
        *PAIR,
        "--epochs",
        1,
        "--batch-size",
        63,
        "--out",
        tmp_path / "run",
        "--set",
        "data.train_fraction=0.3",
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: batch size 63 is not divisible by the world size 2 (pick a batch size that is a "
        "multiple of the number of processes)"
    ]


@pytest.mark.slow
def test_a_user_error_on_one_rank_is_printed_once_by_that_rank(tmp_path):
    fault = {"FAULT_RANK": "1", "FAULT_KIND": "user"}
    options = ("distill", *PAIR, "--epochs", 1, "--out", tmp_path / "run", "--set", "data.train_fraction=0.3")
    result = torchrun(*options, entry=(str(Path(__file__).parent / "rank_fault.py"),), env=fault)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: rank 1: injected mistake (the hint)"], result.stderr


def _bn_main(rank, port, path):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    torch.manual_seed(1 + rank)  # each rank's own shard
    ddp(torch.randn(8, 3, 6, 6) + rank)
    trained = {k: v.clone() for k, v in model[1].state_dict().items()}
    stats = {"trained": trained["running_mean"]}
    for mode in ("broadcast", "reduce"):
        model[1].load_state_dict(trained)
        sync_batchnorm(model, DistEnv(rank, rank, 2), mode)
        stats[mode] = torch.stack([model[1].running_mean, model[1].running_var])
    torch.save(stats, path / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ranks_batchnorm_statistics_differ_after_training_and_agree_after_the_sync(tmp_path):
    mp.start_processes(_bn_main, args=(free_port(), tmp_path), nprocs=2, start_method="spawn", join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert not torch.allclose(r0["trained"], r1["trained"]), "each rank's statistics come from its own shard"
    assert torch.equal(r0["broadcast"], r1["broadcast"]) and torch.equal(r0["broadcast"][0], r0["trained"])
    assert torch.equal(r0["reduce"], r1["reduce"])
    torch.testing.assert_close(r0["reduce"][0], (r0["trained"] + r1["trained"]) / 2)


def _rank_main(rank, port, root, results):
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    from gtcompress.pipeline import run_distill

    name = "digits" if rank == 0 else f"imagefolder:{root}/missing-on-rank-1"
    cfg = RunConfig.model_validate(
        {"teacher": {"arch": TEACHER, "train": {"epochs": 1}}, "student": {"arch": STUDENT}, "data": {"name": name}}
    )
    try:
        run_distill(cfg, out=root / "run")
        results[rank] = "finished"
    except UserError as e:
        results[rank] = e.message


@pytest.mark.slow
def test_data_missing_on_one_rank_stops_every_rank_with_that_rank_named(tmp_path):
    results = mp.Manager().dict()
    mp.start_processes(_rank_main, args=(free_port(), tmp_path, results), nprocs=2, start_method="spawn", join=True)
    assert results[0].startswith("rank 1: image folder") and results[1] == results[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


def _logits_main(rank, port, path):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo")
    data, teacher = _data_and_teacher()
    ctx = Context(
        run=RunDir(path), train_data=data, val_data=data, device=torch.device("cpu"), dist=DistEnv(rank, rank, 2)
    )
    logits = dataset_logits(teacher, data, ctx, batch_size=4)
    if rank == 0:
        torch.save(logits, path / "ddp.pt")
    torch.distributed.destroy_process_group()


def _data_and_teacher():
    cfg = DataConfig(name="synthetic", img_size=16, synthetic=SyntheticConfig(num_classes=3, train_per_class=5))
    splits = load_splits(cfg)
    data = Transformed(splits.train, build_transform(cfg, splits, 16, (0.5,) * 3, (0.5,) * 3, training=False))
    torch.manual_seed(0)
    return data, create_model(TEACHER, 3).eval()


@pytest.mark.slow
def test_sharded_teacher_logits_equal_single_process_ones(tmp_path):
    mp.start_processes(_logits_main, args=(free_port(), tmp_path), nprocs=2, start_method="spawn", join=True)
    data, teacher = _data_and_teacher()
    with torch.no_grad():
        expected = torch.cat([teacher(torch.stack([data[i][0]])) for i in range(len(data))])
    # batches of 4 per rank against single images: kernels may sum in another order, so rounding, not exactness
    torch.testing.assert_close(torch.load(tmp_path / "ddp.pt"), expected, rtol=1e-4, atol=1e-5)


def test_device_requests_that_cannot_be_met():
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda", "fp32")
    with pytest.raises(UserError, match="fp16 training needs a CUDA device"):
        resolve_device("cpu", "fp16")


@pytest.mark.parametrize("features", [["avx2", "f16c"], ["avx2", "avx512f", "avx512_vnni"], ["amx_bf16"]])
def test_bf16_on_a_cpu_needs_its_bf16_instructions(monkeypatch, features):
    import gtcompress.distributed as distributed

    monkeypatch.setattr(distributed, "cpu_features", lambda: features)
    if "amx_bf16" in features:
        assert resolve_device("cpu", "bf16").type == "cpu"
    else:
        with pytest.raises(UserError, match="bf16 training on a CPU needs its bf16 instructions"):
            resolve_device("cpu", "bf16")
    assert resolve_device("cpu", "fp32").type == "cpu"


@pytest.mark.slow
def test_a_failed_rank_ends_the_job_in_bounded_time_with_one_line_and_the_run_resumes(tmp_path):
    out, fault = tmp_path / "run", {"FAULT_RANK": "1", "FAULT_STAGE": "generous_teacher"}
    options = ("distill", *PAIR, "--epochs", 1, "--out", out, "--set", "data.train_fraction=0.3")
    start = time.monotonic()
    result = torchrun(*options, entry=(str(Path(__file__).parent / "rank_fault.py"),), env=fault)
    assert time.monotonic() - start < 60, "the other rank must not wait for a collective's timeout"
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert ours == [
        "error: rank 1 failed: RuntimeError: injected fault (torchrun stops the other ranks; continue with --resume)"
    ]
    assert "[rank0]" not in result.stderr and "[rank1]" not in result.stderr, "no rank prints a traceback"
    assert "injected fault" in result.stderr.split("Root Cause")[1], "torchrun's summary keeps the traceback"
    resumed = torchrun("distill", "--resume", "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "standard_teacher: complete" in resumed.stdout
    assert set(json.loads((out / "metrics.json").read_text())) == {"standard_teacher", "generous_teacher", "student"}
