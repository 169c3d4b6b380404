"""Losses: pure functions of logits, computed in fp32.

Notation: `logits_s` student (or Generous Teacher) logits, `logits_t` frozen teacher logits, both (B, C);
`target` int64 labels (B,). Every loss is a batch mean. Multi-term losses cast their inputs to fp32 once,
so that autograd sums the terms' gradients in fp32 rather than in the logits' bf16/fp16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

STD_EPS = 1e-7


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-sample KL(p || q) from log-probabilities over dim 1."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)


def standardize(logits: Tensor) -> Tensor:
    """Per-sample z-score of the logits; softmax(z / k) then has temperature T = k * std(logits)."""
    logits = logits.float()
    mean = logits.mean(dim=1, keepdim=True)
    return (logits - mean) / (logits.std(dim=1, keepdim=True) + STD_EPS)


def non_target(logits: Tensor, target: Tensor) -> Tensor:
    """The logits with each sample's target class removed: (B, C) -> (B, C - 1)."""
    keep = ~F.one_hot(target, logits.shape[1]).bool()
    return logits[keep].view(logits.shape[0], -1)


def ce_loss(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def kd_loss(logits_s: Tensor, logits_t: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: T^2 * KL(softmax(z_t / T) || softmax(z_s / T))."""
    t = temperature
    log_p_t = F.log_softmax(logits_t.float() / t, dim=1)
    log_p_s = F.log_softmax(logits_s.float() / t, dim=1)
    return t**2 * _kl(log_p_t, log_p_s).mean()


def lskd_loss(logits_s: Tensor, logits_t: Tensor, k: float = 2.0) -> Tensor:
    """KD with logit standardisation: each model's own per-sample T = k * std(logits), scaled by k^2."""
    return kd_loss(standardize(logits_s), standardize(logits_t), temperature=k)


def nckd_loss(logits_s: Tensor, logits_t: Tensor, target: Tensor, temperature: float = 4.0) -> Tensor:
    """Non-target-class KD: T^2 * KL over the softmax of the C - 1 non-target classes."""
    t = temperature
    log_p_t = F.log_softmax(non_target(logits_t.float(), target) / t, dim=1)
    log_p_s = F.log_softmax(non_target(logits_s.float(), target) / t, dim=1)
    return t**2 * _kl(log_p_t, log_p_s).mean()


def _binary_log_probs(logits: Tensor, target: Tensor, temperature: float) -> Tensor:
    """log (p_target, 1 - p_target) at temperature T, from log_softmax (max-subtracted, exact at large logits)."""
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    log_target = log_p.gather(1, target[:, None]).squeeze(1)
    log_rest = torch.logsumexp(non_target(log_p, target), dim=1)
    return torch.stack([log_target, log_rest], dim=1)


def tckd_loss(logits_s: Tensor, logits_t: Tensor, target: Tensor, temperature: float = 4.0) -> Tensor:
    """Target-class KD: T^2 * binary KL between (p_target, 1 - p_target) of teacher and student."""
    t = temperature
    return t**2 * _kl(_binary_log_probs(logits_t, target, t), _binary_log_probs(logits_s, target, t)).mean()


def dkd_loss(
    logits_s: Tensor, logits_t: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0
) -> Tensor:
    """Decoupled KD (Zhao et al. 2022): alpha * TCKD + beta * NCKD."""
    logits_s, logits_t = logits_s.float(), logits_t.float()
    return alpha * tckd_loss(logits_s, logits_t, target, temperature) + beta * nckd_loss(
        logits_s, logits_t, target, temperature
    )


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    logits_s: Tensor, logits_t: Tensor, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0
) -> Tensor:
    """DIST (Huang et al. 2022): T^2 * (beta * inter-class + gamma * intra-class) Pearson distances."""
    t = temperature
    p_s = F.softmax(logits_s.float() / t, dim=1)
    p_t = F.softmax(logits_t.float() / t, dim=1)
    inter = 1 - _pearson_rows(p_s, p_t).mean()
    intra = 1 - _pearson_rows(p_s.T, p_t.T).mean()
    return t**2 * (beta * inter + gamma * intra)


def generous_term(
    logits_gt: Tensor,
    logits_st: Tensor,
    target: Tensor,
    k: float = 1.0,
    scale: str = "st_temperature",
    temperature: float | None = None,
    classes: str = "non_target",
) -> Tensor:
    """The GT's distillation term as the authors' code computes it (EifelTing/Generous-Teacher, train_generous.py).

    Per sample: KL(ST || GT) over the non-target classes, each model's logits divided by its own temperature
    T = k * std(logits) (all classes, unbiased), times the ST's T^2; then the batch mean. Ablations:
    `scale="k_squared"` multiplies by k^2 instead (LS-KD's convention; this product's earlier variant);
    `temperature` fixes T for both models (times T^2); `classes="all"` keeps the target class (plain KD).
    """
    logits_gt, logits_st = logits_gt.float(), logits_st.float()
    if temperature is None:
        t_gt, t_st = (k * z.std(dim=1, keepdim=True).clamp_min(STD_EPS) for z in (logits_gt, logits_st))
    else:
        t_gt = t_st = torch.full_like(logits_st[:, :1], temperature)
    z_gt, z_st = logits_gt / t_gt, logits_st / t_st
    if classes == "non_target":
        z_gt, z_st = non_target(z_gt, target), non_target(z_st, target)
    kl = _kl(F.log_softmax(z_st, dim=1), F.log_softmax(z_gt, dim=1))
    weight = k**2 if scale == "k_squared" and temperature is None else t_st.squeeze(1) ** 2
    return (weight * kl).mean()


def generous_teacher_loss(
    logits_gt: Tensor,
    logits_st: Tensor,
    target: Tensor,
    beta: float = 1.0,
    k: float = 1.0,
    label_smoothing: float = 0.0,
    scale: str = "st_temperature",
    temperature: float | None = None,
    classes: str = "non_target",
) -> dict[str, Tensor]:
    """L_GT = CE(z_gt, y) + beta * generous_term(ST -> GT); `beta` (the authors' alpha) carries the warm-up factor.

    Returns the total and its two terms. With beta = 0 this is the continued teacher's plain CE.
    """
    logits_gt, logits_st = logits_gt.float(), logits_st.float()
    ce = ce_loss(logits_gt, target, label_smoothing)
    nckd = beta * generous_term(logits_gt, logits_st, target, k, scale, temperature, classes)
    return {"loss": ce + nckd, "ce": ce, "nckd": nckd}


def warmup_factor(progress: float, warmup_epochs: float) -> float:
    """Linear ramp from 0 to 1 over the first `warmup_epochs` (fractional) epochs."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, progress / warmup_epochs)
