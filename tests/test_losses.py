"""Each loss against an independent slow reference (explicit loops in float64), plus edge cases."""

import math
import typing

import pytest
import torch

from gtcompress import losses, objectives
from gtcompress.config import METHODS, GenerousConfig, Method, StudentConfig, TrainConfig


def logsumexp_list(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def log_softmax_list(values, t):
    lse = logsumexp_list([v / t for v in values])
    return [v / t - lse for v in values]


def softmax_list(values, t):
    return [math.exp(v) for v in log_softmax_list(values, t)]


def kl_list(log_p, log_q):
    """KL(p || q) from log-probabilities, so that underflowing probabilities stay exact."""
    return sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q))


def std_list(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def ref_kd(s, t, temp):
    return sum(temp**2 * kl_list(log_softmax_list(ti, temp), log_softmax_list(si, temp)) for si, ti in zip(s, t)) / len(
        s
    )


def ref_nckd(s, t, y, temp_s, temp_t, scale):
    total = 0.0
    for i, (si, ti) in enumerate(zip(s, t)):
        s_nt = [v for j, v in enumerate(si) if j != y[i]]
        t_nt = [v for j, v in enumerate(ti) if j != y[i]]
        total += scale * kl_list(log_softmax_list(t_nt, temp_t(ti)), log_softmax_list(s_nt, temp_s(si)))
    return total / len(s)


def ref_tckd(s, t, y, temp):
    total = 0.0
    for i, (si, ti) in enumerate(zip(s, t)):

        def binary(row):
            logs = log_softmax_list(row, temp)
            return [logs[y[i]], logsumexp_list([v for j, v in enumerate(logs) if j != y[i]])]

        total += temp**2 * kl_list(binary(ti), binary(si))
    return total / len(s)


def ref_pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (z - mb) for x, z in zip(a, b))
    den = math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((z - mb) ** 2 for z in b))
    return num / (den + 1e-8)


def ref_dist(s, t, beta, gamma, temp):
    ps = [softmax_list(r, temp) for r in s]
    pt = [softmax_list(r, temp) for r in t]
    inter = 1 - sum(ref_pearson(a, b) for a, b in zip(ps, pt)) / len(ps)
    cols = range(len(ps[0]))
    intra = 1 - sum(ref_pearson([r[c] for r in ps], [r[c] for r in pt]) for c in cols) / len(cols)
    return temp**2 * (beta * inter + gamma * intra)


@pytest.fixture(params=[(6, 10), (1, 5), (4, 2)], ids=["B6C10", "B1C5", "B4C2"])
def batch(request):
    b, c = request.param
    g = torch.Generator().manual_seed(b * 100 + c)
    s = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    t = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, c, (b,), generator=g)
    return s, t, y


def as_lists(*tensors):
    return [x.tolist() for x in tensors]


def test_kd_matches_reference(batch):
    s, t, y = batch
    assert losses.kd_loss(s, t, 4.0).item() == pytest.approx(ref_kd(*as_lists(s, t), 4.0), rel=1e-5, abs=1e-7)


def test_nckd_matches_reference(batch):
    s, t, y = batch
    ref = ref_nckd(*as_lists(s, t, y), lambda _: 4.0, lambda _: 4.0, 16.0)
    assert losses.nckd_loss(s, t, y, 4.0).item() == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_tckd_matches_reference(batch):
    s, t, y = batch
    assert losses.tckd_loss(s, t, y, 4.0).item() == pytest.approx(ref_tckd(*as_lists(s, t, y), 4.0), rel=1e-5, abs=1e-7)


def test_dkd_is_weighted_sum_of_reference_terms(batch):
    s, t, y = batch
    ls, lt, ly = as_lists(s, t, y)
    ref = 1.0 * ref_tckd(ls, lt, ly, 4.0) + 8.0 * ref_nckd(ls, lt, ly, lambda _: 4.0, lambda _: 4.0, 16.0)
    assert losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0).item() == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_lskd_uses_per_sample_std_temperature(batch):
    s, t, y = batch
    k = 2.0
    ls, lt = as_lists(s, t)
    ref = sum(
        k**2 * kl_list(log_softmax_list(ti, k * std_list(ti)), log_softmax_list(si, k * std_list(si)))
        for si, ti in zip(ls, lt)
    ) / len(ls)
    assert losses.lskd_loss(s, t, k).item() == pytest.approx(ref, rel=1e-5, abs=1e-7)


def ref_generous_term(s, t, y, k, scale="st_temperature"):
    """Per sample: KL over the non-target classes at each model's T = k * std(own logits), times (k * std_t)^2."""
    total = 0.0
    for i, (si, ti) in enumerate(zip(s, t)):
        weight = (k * std_list(ti)) ** 2 if scale == "st_temperature" else k**2
        total += ref_nckd([si], [ti], [y[i]], lambda row: k * std_list(row), lambda row: k * std_list(row), weight)
    return total / len(s)


def test_generous_teacher_loss_matches_reference(batch):
    s, t, y = batch
    beta, k = 1.5, 2.0
    ls, lt, ly = as_lists(s, t, y)
    nckd = beta * ref_generous_term(ls, lt, ly, k)
    ce = sum(-log_softmax_list(row, 1.0)[ly[i]] for i, row in enumerate(ls)) / len(ls)
    out = losses.generous_teacher_loss(s, t, y, beta=beta, k=k)
    assert out["nckd"].item() == pytest.approx(nckd, rel=1e-5, abs=1e-7)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert out["loss"].item() == pytest.approx(ce + nckd, rel=1e-5)


def authors_loss(output_stu, output_tea, labels, epoch, t_norm=1.0, alpha=1.0, warmup=20):
    """The authors' GT loss, as train_generous.py (EifelTing/Generous-Teacher) computes it: the target masked
    with -1000 after dividing each model's logits by Tn * its own std, the ST's (Tn * std)^2 per sample."""
    tch_loss = torch.nn.CrossEntropyLoss()(output_stu, labels)
    gt_mask = torch.zeros_like(output_stu).scatter_(1, labels.unsqueeze(1), 1).bool()
    dywt = output_tea.std(dim=1, keepdim=True) * t_norm
    dyws = output_stu.std(dim=1, keepdim=True) * t_norm
    pred_teacher_part2 = torch.nn.functional.softmax(output_tea / dywt - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = torch.nn.functional.log_softmax(output_stu / dyws - 1000.0 * gt_mask, dim=1)
    kl = torch.nn.functional.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="none")
    nckd_loss = (kl.sum(1, keepdim=True) * dywt**2).mean()
    return tch_loss + alpha * min(epoch / warmup, 1.0) * nckd_loss


@pytest.mark.parametrize("batch_size", [1, 7, 64])
@pytest.mark.parametrize("num_classes", [3, 10, 100])
@pytest.mark.parametrize("logit_scale", [0.3, 1.0, 10.0])
def test_default_generous_objective_is_the_authors_loss(batch_size, num_classes, logit_scale):
    g = torch.Generator().manual_seed(batch_size * num_classes)
    s = (torch.randn(batch_size, num_classes, generator=g) * logit_scale).requires_grad_()
    t = torch.randn(batch_size, num_classes, generator=g) * logit_scale * 1.7 + 0.5
    y = torch.randint(0, num_classes, (batch_size,), generator=g)
    objective = objectives.generous_objective(GenerousConfig(train=TrainConfig(epochs=200)))
    ours = objective(s, t, y, 57.3)["loss"]
    (grad,) = torch.autograd.grad(ours, s)
    s_ref = s.detach().clone().requires_grad_()
    theirs = authors_loss(s_ref, t, y, epoch=57)
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad, s_ref.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("epoch", [0, 1, 5, 13, 19, 20, 150])
def test_generous_warm_up_steps_per_epoch_as_the_authors(epoch):
    g = torch.Generator().manual_seed(epoch)
    s, t = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    objective = objectives.generous_objective(GenerousConfig(train=TrainConfig(epochs=200)))  # warm-up: 20 epochs
    for within in (0.0, 0.5, 0.99):  # every step of an epoch has the epoch's factor
        ours = objective(s, t, y, epoch + within)["loss"].item()
        assert ours == pytest.approx(authors_loss(s, t, y, epoch).item(), rel=1e-5, abs=1e-7)


def test_dist_matches_reference(batch):
    s, t, y = batch
    ref = ref_dist(*as_lists(s, t), 1.0, 2.0, 4.0)
    assert losses.dist_loss(s, t, 1.0, 2.0, 4.0).item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_kl_terms_vanish_when_student_equals_teacher(batch):
    s, _, y = batch
    assert losses.kd_loss(s, s).item() == pytest.approx(0, abs=1e-9)
    assert losses.nckd_loss(s, s, y).item() == pytest.approx(0, abs=1e-9)
    assert losses.tckd_loss(s, s, y).item() == pytest.approx(0, abs=1e-9)


def test_nckd_ignores_the_target_logit():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    y = torch.tensor([0, 3, 6, 2])
    bumped = s.clone()
    bumped[torch.arange(4), y] += 50.0
    assert losses.nckd_loss(bumped, t, y).item() == pytest.approx(losses.nckd_loss(s, t, y).item(), rel=1e-6)
    assert losses.kd_loss(bumped, t).item() != pytest.approx(losses.kd_loss(s, t).item(), rel=1e-3)


def test_nckd_is_zero_with_two_classes():
    s, t, y = torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 1, 1])
    assert losses.nckd_loss(s, t, y).item() == 0.0


ALL_LOSSES = {
    "kd": lambda s, t, y: losses.kd_loss(s, t),
    "lskd": lambda s, t, y: losses.lskd_loss(s, t),
    "nckd": lambda s, t, y: losses.nckd_loss(s, t, y),
    "tckd": lambda s, t, y: losses.tckd_loss(s, t, y),
    "dkd": lambda s, t, y: losses.dkd_loss(s, t, y),
    "dist": lambda s, t, y: losses.dist_loss(s, t),
    "gt": lambda s, t, y: losses.generous_teacher_loss(s, t, y)["loss"],
}


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_huge_logits_stay_finite_with_finite_gradients(name, dtype):
    s = (torch.tensor([[1e4, -1e4, 0.0, 5e3], [-1e4, 1e4, 1e4, -5e3]]) * 0.99).to(dtype).requires_grad_()
    t = torch.tensor([[-1e4, 1e4, 3e3, 0.0], [1e4, -1e4, 0.0, 1e4]]).to(dtype)
    y = torch.tensor([0, 2])
    loss = ALL_LOSSES[name](s, t, y)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(s.grad.float()).all()


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_low_precision_input_agrees_with_fp32(name):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 10, generator=g) * 2, torch.randn(8, 10, generator=g) * 2
    y = torch.randint(0, 10, (8,), generator=g)
    # Compare at the bf16-rounded inputs so only the loss arithmetic differs.
    s16, t16 = s.bfloat16(), t.bfloat16()
    full = ALL_LOSSES[name](s16.float(), t16.float(), y).item()
    assert ALL_LOSSES[name](s16, t16, y).item() == pytest.approx(full, rel=1e-5, abs=1e-6)


def test_every_method_has_a_config_block_and_a_name():
    assert set(METHODS) == set(typing.get_args(Method))
    for name, cls in METHODS.items():
        assert StudentConfig.model_fields[name].annotation is cls


def test_warmup_ramps_linearly_then_holds():
    assert losses.warmup_factor(0.0, 2.0) == 0.0
    assert losses.warmup_factor(1.0, 2.0) == 0.5
    assert losses.warmup_factor(5.0, 2.0) == 1.0
    assert losses.warmup_factor(0.0, 0.0) == 1.0


def test_generous_objective_warms_up_beta():
    cfg = GenerousConfig(beta=2.0, k=2.0, warmup=0.5, train=TrainConfig(epochs=4))
    objective = objectives.generous_objective(cfg)
    g = torch.Generator().manual_seed(2)
    s, t, y = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.tensor([0, 1, 2, 3])
    full = losses.generous_teacher_loss(s, t, y, beta=2.0, k=2.0)["nckd"].item()
    assert objective(s, t, y, 0.0)["nckd"].item() == 0.0
    assert objective(s, t, y, 0.9)["nckd"].item() == 0.0
    assert objective(s, t, y, 1.0)["nckd"].item() == pytest.approx(full / 2, rel=1e-6)
    assert objective(s, t, y, 1.9)["nckd"].item() == pytest.approx(full / 2, rel=1e-6)
    assert objective(s, t, y, 3.0)["nckd"].item() == pytest.approx(full, rel=1e-6)


@pytest.mark.parametrize("method", typing.get_args(Method))
def test_student_objective_combines_weighted_ce_and_method(method):
    cfg = StudentConfig(method=method, train=TrainConfig(epochs=10))
    objective = objectives.student_objective(cfg)
    g = torch.Generator().manual_seed(3)
    s, t, y = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randint(0, 8, (5,), generator=g)
    out = objective(s, t, y, 10.0)
    mcfg = cfg.method_config
    assert out["ce"].item() == pytest.approx(mcfg.ce_weight * losses.ce_loss(s, y).item(), rel=1e-6)
    assert out["kd"].item() == pytest.approx(objectives.method_term(mcfg, s, t, y).item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(out["ce"].item() + out["kd"].item(), rel=1e-6)


def test_huge_logits_match_reference_in_float64():
    s = torch.tensor([[1e4, -1e4, 0.0, 5e3], [-1e4, 1e4, 9.9e3, -5e3]], dtype=torch.float64)
    t = torch.tensor([[-1e4, 1e4, 3e3, 0.0], [1e4, -1e4, 0.0, 1e4]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    ls, lt, ly = as_lists(s, t, y)
    assert losses.nckd_loss(s, t, y).item() == pytest.approx(
        ref_nckd(ls, lt, ly, lambda _: 4.0, lambda _: 4.0, 16.0), rel=1e-4
    )
    assert losses.tckd_loss(s, t, y).item() == pytest.approx(ref_tckd(ls, lt, ly, 4.0), rel=1e-4)
    assert losses.kd_loss(s, t).item() == pytest.approx(ref_kd(ls, lt, 4.0), rel=1e-4)


@pytest.mark.parametrize("offset", [0.0, 100.0, 1000.0])
def test_tckd_is_exact_under_large_logit_offsets_in_fp32(offset):
    # z_y/T - logsumexp(z/T) without subtracting the maximum loses digits as the logits grow (mdistiller: 4e-6).
    g = torch.Generator().manual_seed(4)
    s = (torch.randn(16, 10, generator=g) + offset).float()
    t = (torch.randn(16, 10, generator=g) + offset).float()
    y = torch.randint(0, 10, (16,), generator=g)
    reference = ref_tckd(*as_lists(s.double(), t.double(), y), 4.0)
    assert losses.tckd_loss(s, t, y).item() == pytest.approx(reference, rel=1e-5)


def bf16_rounding(x):
    """One bf16 unit in the last place of each element (its 8-bit mantissa)."""
    return 2.0 ** (torch.floor(torch.log2(x.abs().clamp_min(1e-30))) - 7)


@pytest.mark.parametrize("name", ["dkd", "gt"])
def test_bf16_gradients_are_summed_in_fp32(name):
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(32, 100, generator=g) * 4, torch.randn(32, 100, generator=g) * 4
    y = torch.randint(0, 100, (32,), generator=g)
    s16, t16 = s.bfloat16(), t.bfloat16()
    low = s16.clone().requires_grad_()
    ALL_LOSSES[name](low, t16, y).backward()
    ref = s16.float().requires_grad_()
    ALL_LOSSES[name](ref, t16.float(), y).backward()
    expected = ref.grad.bfloat16().float()
    assert ((low.grad.float() - expected).abs() <= bf16_rounding(expected)).all()


def test_generous_ablations_change_only_their_ingredient(batch):
    s, t, y = batch
    k = 1.0
    ls, lt, ly = as_lists(s, t, y)
    fixed = losses.generous_term(s, t, y, k=k, temperature=4.0)
    assert fixed.item() == pytest.approx(ref_nckd(ls, lt, ly, lambda _: 4.0, lambda _: 4.0, 16.0), rel=1e-5, abs=1e-7)
    full = losses.generous_term(s, t, y, k=k, classes="all")
    ref_full = sum(
        (k * std_list(ti)) ** 2
        * kl_list(log_softmax_list(ti, k * std_list(ti)), log_softmax_list(si, k * std_list(si)))
        for si, ti in zip(ls, lt)
    ) / len(ls)
    assert full.item() == pytest.approx(ref_full, rel=1e-5, abs=1e-7)
    k_squared = losses.generous_term(s, t, y, k=2.0, scale="k_squared")
    assert k_squared.item() == pytest.approx(ref_generous_term(ls, lt, ly, 2.0, "k_squared"), rel=1e-5, abs=1e-7)
    if s.shape[1] > 2:  # with two classes the non-target distribution is one class: both terms are 0
        assert k_squared.item() != pytest.approx(losses.generous_term(s, t, y, k=2.0).item(), rel=1e-2)


def test_generous_objective_with_zero_beta_is_plain_ce(batch):
    s, t, y = batch
    out = objectives.generous_objective(GenerousConfig(beta=0.0, train=TrainConfig(epochs=2)))(s, t, y, 1.0)
    assert out["nckd"].item() == 0.0
    assert out["loss"].item() == pytest.approx(losses.ce_loss(s, y).item(), rel=1e-6)


def test_dist_term_is_weighted_like_the_authors():
    cfg = StudentConfig(method="dist").method_config
    g = torch.Generator().manual_seed(6)
    s, t, y = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.tensor([0, 1, 2, 3])
    assert cfg.kd_weight == 2.0
    assert objectives.method_term(cfg, s, t, y).item() == pytest.approx(2.0 * losses.dist_loss(s, t).item(), rel=1e-6)


def test_every_registered_method_has_its_term_and_the_configuration_needs_no_torch():
    import subprocess
    import sys

    from gtcompress.config import METHODS

    assert set(objectives.TERMS) == set(METHODS.values())
    code = "import sys, gtcompress.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
