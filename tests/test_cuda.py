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
    from gtcompress.backends.torch_runner import TorchBackend
    from gtcompress.models import create_model

    model = create_model(TEACHER, 10).eval()
    x = torch.randn(4, 3, 32, 32).numpy()
    cpu = TorchBackend(model, "cpu").infer(x)
    gpu = TorchBackend(model, "cuda").infer(x)
    assert abs(cpu - gpu).max() < 1e-3


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_graph_replays_give_eager_results_for_every_input_and_batch(precision):
    from gtcompress.backends import Setting
    from gtcompress.backends.torch_runner import TorchBackend
    from gtcompress.models import create_model

    model = create_model("mobilenetv3_small_050", 10).eval()
    eager = TorchBackend(model, "cuda", precision)
    graph = TorchBackend(model, "cuda", precision, setting=Setting(cuda_graph=True))
    tol = 1e-3 if precision == "fp32" else 5e-2
    for batch in (1, 4, 1):  # a shape seen before replays its graph; a new one is captured
        x = torch.randn(batch, 3, 32, 32).numpy()
        assert abs(graph.infer(x) - eager.infer(x)).max() < tol, (precision, batch)
    assert sorted(graph.graphs) == [(1, 3, 32, 32), (4, 3, 32, 32)]


def test_cuda_graphs_cut_the_launch_cost_of_a_small_model():
    """A small model at batch 1 is launch-bound: replaying its graph must beat eager calls clearly."""
    import numpy as np

    from gtcompress.backends import Setting
    from gtcompress.backends.torch_runner import TorchBackend
    from gtcompress.models import create_model
    from gtcompress.timing import like_for_like_cuda, time_backend

    like_for_like_cuda()
    model = create_model("mobilenetv3_small_050", 10).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    p50 = {
        graph: float(
            np.median(time_backend(TorchBackend(model, "cuda", setting=Setting(cuda_graph=graph)), x, 20, 200, None))
        )
        for graph in (False, True)
    }
    assert p50[True] * 1.5 < p50[False], p50
