"""Mixed precision and DDP on CUDA: written to run on a GPU machine, skipped (with the reason) elsewhere."""

import json

import pytest
import torch
import yaml
from conftest import TEACHER, distill

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_short_digits_run_trains_in_mixed_precision(precision, tmp_path):
    out = tmp_path / "run"
    result = distill(
        "--epochs", 3, "--device", "cuda", "--precision", precision, "--out", out, "--set", "teacher.train.lr=0.1"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("standard_teacher", "generous_teacher", "student"):
        assert metrics[stage]["top1"] > 30, (stage, metrics[stage]["top1"])
    assert yaml.safe_load((out / "config.yaml").read_text())["environment"]["device"].startswith("cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_under_autocast_are_fp32_and_finite(dtype):
    from gtcompress import losses

    s = torch.randn(64, 100, device="cuda", requires_grad=True)
    t = torch.randn(64, 100, device="cuda") * 30
    y = torch.randint(0, 100, (64,), device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = losses.generous_teacher_loss(s.to(dtype), t.to(dtype), y)["loss"] + losses.dkd_loss(s, t, y)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(s.grad).all()


def test_cuda_backend_matches_cpu():
    from gtcompress.backends import TorchBackend
    from gtcompress.models import create_model

    model = create_model(TEACHER, 10).eval()
    x = torch.randn(4, 3, 32, 32).numpy()
    cpu = TorchBackend(model, "cpu").infer(x)
    gpu = TorchBackend(model, "cuda").infer(x)
    assert abs(cpu - gpu).max() < 1e-3
