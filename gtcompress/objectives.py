"""Objectives: what each stage minimises, built from its configuration and the pure losses.

An objective maps (logits, frozen teacher's logits or None, target, epochs done as a float) to named loss
terms, "loss" being the one to minimise. Logits are cast to fp32 once, here, before any term uses them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from . import losses
from .config import DISTConfig, DKDConfig, GenerousConfig, KDConfig, LSKDConfig, MethodConfig, StudentConfig
from .losses import ce_loss, generous_teacher_loss, warmup_factor

Objective = Callable[[Tensor, Tensor | None, Tensor, float], dict[str, Tensor]]
Term = Callable[[Any, Tensor, Tensor, Tensor], Tensor]  # (method config, student logits, teacher logits, target)

# Each distillation method's loss term over (student, teacher) logits, by its configuration class.
TERMS: dict[type[MethodConfig], Term] = {
    KDConfig: lambda c, s, t, y: c.kd_weight * losses.kd_loss(s, t, c.temperature),
    DKDConfig: lambda c, s, t, y: losses.dkd_loss(s, t, y, c.alpha, c.beta, c.temperature),
    LSKDConfig: lambda c, s, t, y: c.kd_weight * losses.lskd_loss(s, t, c.k),
    DISTConfig: lambda c, s, t, y: c.kd_weight * losses.dist_loss(s, t, c.beta, c.gamma, c.temperature),
}


def method_term(method: MethodConfig, logits_s: Tensor, logits_t: Tensor, target: Tensor) -> Tensor:
    """The method's knowledge term (without its warm-up and CE)."""
    return TERMS[type(method)](method, logits_s, logits_t, target)


def ce_objective(label_smoothing: float = 0.0) -> Objective:
    def objective(logits: Tensor, _teacher: Tensor | None, target: Tensor, _progress: float) -> dict[str, Tensor]:
        ce = ce_loss(logits, target, label_smoothing)
        return {"loss": ce, "ce": ce}

    return objective


def generous_objective(cfg: GenerousConfig) -> Objective:
    """CE plus the warmed-up generous term; with beta = 0 (the continued teacher) the same path, CE alone.

    The warm-up steps once per epoch, min(epoch / warm-up epochs, 1) with the epoch counted from 0, as the
    authors' train_generous.py does: the first epoch is CE alone.
    """
    warmup_epochs = cfg.warmup * cfg.train.epochs

    def objective(logits: Tensor, teacher: Tensor | None, target: Tensor, progress: float) -> dict[str, Tensor]:
        beta = cfg.beta * warmup_factor(math.floor(progress), warmup_epochs)
        return generous_teacher_loss(
            logits, teacher, target, beta, cfg.k, cfg.train.label_smoothing, cfg.scale, cfg.temperature, cfg.classes
        )

    return objective


def student_objective(cfg: StudentConfig) -> Objective:
    method = cfg.method_config
    warmup_epochs = method.warmup * cfg.train.epochs

    scale = method.teacher_scale
    if not isinstance(scale, float):
        raise TypeError(f"teacher_scale {scale} must be resolved to a number first (logit_scale.resolve_scale)")

    def objective(logits: Tensor, teacher: Tensor | None, target: Tensor, progress: float) -> dict[str, Tensor]:
        logits, teacher = logits.float(), teacher.float() * scale
        ce = method.ce_weight * ce_loss(logits, target, cfg.train.label_smoothing)
        kd = warmup_factor(progress, warmup_epochs) * method_term(method, logits, teacher, target)
        return {"loss": ce + kd, "ce": ce, "kd": kd}

    return objective
