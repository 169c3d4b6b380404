"""Training throughput of the Generous Teacher stage, measured side by side in one run.

1. gtcompress's training loop (`train.fit`) vs a plain PyTorch loop over the same timm model, data,
   batch and loss, teacher forward included in both (goal: ours >= 0.9 of plain). Interleaved rounds.
2. The GT stage through the CLI on 1 process (all threads) vs 2 gloo processes under torchrun (one thread each).
3. The GT stage with the frozen teacher's logits cached vs a live teacher forward (no augmentation, so exact).
4. bf16 vs fp32 on CUDA, where there is a GPU.

    python -m benchmarks.train_throughput [--arch resnet18] [--rounds 3] \
        [--out benchmarks/results/train_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gtcompress.config import DataConfig, GenerousConfig, TrainConfig
from gtcompress.data import build_transform, load_splits, transformed
from gtcompress.environment import machine_info, versions
from gtcompress.models import ModelSpec, create_model, default_normalization, save_checkpoint
from gtcompress.objectives import generous_objective
from gtcompress.rundir import RunDir
from gtcompress.train import Context, Job, fit, make_optimizer, seed_everything


def data(arch: str, images: int):
    cfg = DataConfig(name="digits")
    splits = load_splits(cfg)
    mean, std = default_normalization(arch)
    train = transformed(splits.train, build_transform(cfg, splits, 32, mean, std, training=True))
    val = transformed(splits.val, build_transform(cfg, splits, 32, mean, std, training=False))
    return torch.utils.data.Subset(train, range(images)), torch.utils.data.Subset(val, range(64))


def ours(arch: str, teacher, train, val, device, batch: int) -> float:
    """Images/s of one epoch of `train.fit` (its own timing: training steps only, no eval)."""
    cfg = GenerousConfig(train=TrainConfig(epochs=1, batch_size=batch, warmup_epochs=0))
    seed_everything(0, 1)
    stage = Job("generous_teacher", create_model(arch, 10), cfg.train, generous_objective(cfg), teacher, 1)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        fit(stage, Context(run=RunDir(Path(tmp)), train_data=train, val_data=val, device=device), 10, records.append)
    return records[0]["images_per_second"]


def plain(arch: str, teacher, train, device, batch: int) -> float:
    """The textbook loop: DataLoader, forward, loss, backward, step (same model, data, loss, optimizer)."""
    cfg = GenerousConfig(train=TrainConfig(epochs=1, batch_size=batch, warmup_epochs=0))
    objective = generous_objective(cfg)
    seed_everything(0, 1)
    model = create_model(arch, 10).to(device, memory_format=torch.channels_last).train()
    teacher = teacher.to(device, memory_format=torch.channels_last).eval()
    optimizer = make_optimizer(model, cfg.train)
    loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True, drop_last=True)
    images, start = 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, memory_format=torch.channels_last), y.to(device)
        logits = model(x)
        with torch.no_grad():
            t = teacher(x)
        loss = objective(logits, t, y, 1.0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def cli_gt_rate(args: list[str], out: Path, env: dict[str, str], torchrun: int = 0) -> float:
    """Mean images/s over the GT stage's epochs after the first, from a real `gtcompress distill` run."""
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(torchrun)]
        if torchrun
        else [sys.executable]
    )
    cmd = [*launcher, "-m", "gtcompress", "distill", *args, "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **env})
    rates = [r["images_per_second"] for r in RunDir(out).history() if r["stage"] == "generous_teacher"]
    return statistics.mean(rates[1:] or rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18", help="teacher and Generous Teacher architecture")
    parser.add_argument("--images", type=int, default=960, help="training images per measured epoch (arm 1)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="GT epochs per CLI run (arms 2-3)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    result: dict = {
        "machine": {
            **machine_info(threads, device.type == "cuda"),
            "device": str(device),
            "load_average_before": load_before,
        },
        "versions": versions(),
        "setup": {"stage": "generous_teacher", "arch": args.arch, "data": "digits 32x32", "batch": args.batch},
    }

    train, val = data(args.arch, args.images)
    torch.manual_seed(0)
    teacher = create_model(args.arch, 10).eval()
    seconds = time.perf_counter()
    ours_rates, plain_rates = [], []
    for _ in range(args.rounds):  # interleaved, so a busy moment of the machine hits both arms
        ours_rates.append(ours(args.arch, teacher, train, val, device, args.batch))
        plain_rates.append(plain(args.arch, teacher, train, device, args.batch))
    ratio = statistics.median(ours_rates) / statistics.median(plain_rates)
    result["loop_vs_plain"] = {
        "ours_images_per_second": ours_rates,
        "plain_images_per_second": plain_rates,
        "ratio_of_medians": ratio,
        "goal": 0.9,
        "met": ratio >= 0.9,
    }
    print(
        f"1. our loop vs plain PyTorch: {statistics.median(ours_rates):.0f} vs "
        f"{statistics.median(plain_rates):.0f} img/s -> {ratio:.2f} (goal >= 0.9)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        st = tmp / "standard_teacher.pt"
        mean, std = default_normalization(args.arch)
        spec = ModelSpec(args.arch, 10, 32, mean, std, tuple(str(i) for i in range(10)))
        save_checkpoint(st, teacher, spec, "standard_teacher", {})
        common = [
            "--teacher",
            args.arch,
            "--teacher-checkpoint",
            str(st),
            "--set",
            f"generous.train.epochs={args.epochs}",
            "--set",
            "student.train.epochs=0",
            "--student",
            args.arch,
        ]
        env1 = {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        env2 = {"OMP_NUM_THREADS": str(max(1, threads // 2)), "HF_HUB_OFFLINE": "1"}
        one, two, live, cached, fp32, bf16 = [], [], [], [], [], []
        no_aug = ["--set", "data.augment_train=false"]
        for r in range(args.rounds):
            one.append(cli_gt_rate(common, tmp / f"one{r}", env1))
            two.append(cli_gt_rate(common, tmp / f"two{r}", env2, torchrun=2))
            live.append(cli_gt_rate(common + no_aug + ["--no-cache-teacher-logits"], tmp / f"live{r}", env1))
            cached.append(cli_gt_rate(common + no_aug + ["--cache-teacher-logits"], tmp / f"cached{r}", env1))
            if device.type == "cuda":
                fp32.append(cli_gt_rate(common + ["--precision", "fp32"], tmp / f"fp32{r}", env1))
                bf16.append(cli_gt_rate(common + ["--precision", "bf16"], tmp / f"bf16{r}", env1))
    ddp = statistics.median(two) / statistics.median(one)
    result["processes_1_vs_2"] = {
        "one_process_images_per_second": one,
        "two_processes_images_per_second": two,
        "threads_per_process": [threads, max(1, threads // 2)],
        "ratio_two_over_one": ddp,
    }
    print(
        f"2. GT stage, 2 gloo processes vs 1 process: {statistics.median(two):.0f} vs "
        f"{statistics.median(one):.0f} img/s -> {ddp:.2f}x"
    )
    saving = statistics.median(cached) / statistics.median(live)
    result["teacher_logit_cache"] = {
        "live_images_per_second": live,
        "cached_images_per_second": cached,
        "speedup": saving,
    }
    print(
        f"3. GT stage with cached teacher logits vs live teacher: {statistics.median(cached):.0f} vs "
        f"{statistics.median(live):.0f} img/s -> {saving:.2f}x"
    )
    if device.type == "cuda":
        amp = statistics.median(bf16) / statistics.median(fp32)
        result["cuda_bf16_vs_fp32"] = {"fp32_images_per_second": fp32, "bf16_images_per_second": bf16, "speedup": amp}
        print(f"4. GT stage on CUDA, bf16 vs fp32: {amp:.2f}x")
    else:
        result["cuda_bf16_vs_fp32"] = "skipped: no CUDA device on this machine"
    result["seconds"] = time.perf_counter() - seconds
    result["machine"]["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
