"""Losses: pure functions of logits (computed in fp32), and the objectives that combine them per stage.

Notation: `logits_s` student (or Generous Teacher) logits, `logits_t` frozen teacher logits, both (B, C);
`target` int64 labels (B,). Every loss is a batch mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import GenerousConfig, MethodConfig, StudentConfig

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
    """log (p_target, 1 - p_target) at temperature T, computed without subtracting probabilities."""
    z = logits.float() / temperature
    log_z = torch.logsumexp(z, dim=1)
    log_target = z.gather(1, target[:, None]).squeeze(1) - log_z
    log_rest = torch.logsumexp(non_target(z, target), dim=1) - log_z
    return torch.stack([log_target, log_rest], dim=1)


def tckd_loss(logits_s: Tensor, logits_t: Tensor, target: Tensor, temperature: float = 4.0) -> Tensor:
    """Target-class KD: T^2 * binary KL between (p_target, 1 - p_target) of teacher and student."""
    t = temperature
    return t**2 * _kl(_binary_log_probs(logits_t, target, t), _binary_log_probs(logits_s, target, t)).mean()


def dkd_loss(
    logits_s: Tensor, logits_t: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0
) -> Tensor:
    """Decoupled KD (Zhao et al. 2022): alpha * TCKD + beta * NCKD."""
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


def generous_teacher_loss(
    logits_gt: Tensor, logits_st: Tensor, target: Tensor, beta: float = 1.0, k: float = 2.0,
    label_smoothing: float = 0.0,
) -> dict[str, Tensor]:
    """L_GT = CE(z_gt, y) + beta * k^2 * NCKD(ST -> GT), each model's non-target softmax at T = k * std(z).

    `beta` carries the warm-up factor. Returns the total and its two terms.
    """
    ce = ce_loss(logits_gt, target, label_smoothing)
    nckd = beta * nckd_loss(standardize(logits_gt), standardize(logits_st), target, temperature=k)
    return {"loss": ce + nckd, "ce": ce, "nckd": nckd}


# Distillation terms by method name: (student logits, teacher logits, target, method config) -> loss.
METHODS: dict[str, Callable[[Tensor, Tensor, Tensor, MethodConfig], Tensor]] = {
    "kd": lambda s, t, y, c: c.kd_weight * kd_loss(s, t, c.temperature),
    "dkd": lambda s, t, y, c: dkd_loss(s, t, y, c.alpha, c.beta, c.temperature),
    "lskd": lambda s, t, y, c: c.kd_weight * lskd_loss(s, t, c.k),
    "dist": lambda s, t, y, c: dist_loss(s, t, c.beta, c.gamma, c.temperature),
}

# An objective maps (logits, teacher logits or None, target, epochs done as a float) to named loss terms,
# "loss" being the one to minimise.
Objective = Callable[[Tensor, Tensor | None, Tensor, float], dict[str, Tensor]]


def warmup_factor(progress: float, warmup_epochs: float) -> float:
    """Linear ramp from 0 to 1 over the first `warmup_epochs` (fractional) epochs."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, progress / warmup_epochs)


def ce_objective(label_smoothing: float = 0.0) -> Objective:
    def objective(logits: Tensor, _teacher: Tensor | None, target: Tensor, _progress: float) -> dict[str, Tensor]:
        ce = ce_loss(logits, target, label_smoothing)
        return {"loss": ce, "ce": ce}

    return objective


def generous_objective(cfg: GenerousConfig) -> Objective:
    warmup_epochs = cfg.warmup * cfg.train.epochs

    def objective(logits: Tensor, teacher: Tensor | None, target: Tensor, progress: float) -> dict[str, Tensor]:
        beta = cfg.beta * warmup_factor(progress, warmup_epochs)
        return generous_teacher_loss(logits, teacher, target, beta, cfg.k, cfg.train.label_smoothing)

    return objective


def student_objective(cfg: StudentConfig) -> Objective:
    method, mcfg = METHODS[cfg.method], cfg.method_config
    warmup_epochs = mcfg.warmup * cfg.train.epochs

    def objective(logits: Tensor, teacher: Tensor | None, target: Tensor, progress: float) -> dict[str, Tensor]:
        ce = mcfg.ce_weight * ce_loss(logits, target, cfg.train.label_smoothing)
        kd = warmup_factor(progress, warmup_epochs) * method(logits, teacher, target, mcfg)
        return {"loss": ce + kd, "ce": ce, "kd": kd}

    return objective
