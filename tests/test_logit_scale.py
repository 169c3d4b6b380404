"""A teacher's logit scale, and a student's teacher rescaled to another teacher's scale."""

import math

import numpy as np
import pytest
import torch

from gtcompress import losses, objectives
from gtcompress.config import MatchScale, RunConfig, StudentConfig, TrainConfig
from gtcompress.errors import UserError
from gtcompress.logit_scale import measure_scale, resolve_scale, student_temperature, with_scale
from gtcompress.records import LogitScale, StageRecord


def test_scale_matches_a_numpy_reference():
    g = torch.Generator().manual_seed(0)
    test, train = 3 * torch.randn(50, 7, generator=g), 5 * torch.randn(40, 7, generator=g)
    s = measure_scale(test, train, temperature=4.0)
    z = test.double().numpy()
    std = z.std(axis=1, ddof=1)
    p = np.exp(z / 4) / np.exp(z / 4).sum(1, keepdims=True)
    assert s.std_mean == pytest.approx(std.mean(), rel=1e-5)
    assert s.std_median == pytest.approx(np.sort(std)[24], rel=1e-5), "torch's median: the lower middle value"
    assert s.std_p95 == pytest.approx(np.quantile(std, 0.95), rel=1e-5)
    assert s.max_abs == pytest.approx(np.abs(z).max(), rel=1e-6)
    assert s.entropy == pytest.approx(-(p * np.log(p)).sum(1).mean(), rel=1e-5)
    assert s.log_classes == pytest.approx(math.log(7))
    assert s.train_std_median == pytest.approx(np.sort(train.double().numpy().std(axis=1, ddof=1))[19], rel=1e-5)


def test_larger_logits_are_sharper_at_the_same_temperature():
    z = torch.randn(20, 10, generator=torch.Generator().manual_seed(1))
    small, large = measure_scale(z, None, 4.0), measure_scale(5 * z, None, 4.0)
    assert large.std_median == pytest.approx(5 * small.std_median, rel=1e-5)
    assert large.entropy < small.entropy < small.log_classes
    assert small.train_std_median is None


def _record(train_median: float | None) -> StageRecord:
    scale = LogitScale(
        std_mean=1, std_median=1, std_p95=1, max_abs=1, temperature=4, entropy=1, log_classes=1,
        train_std_median=train_median,
    )  # fmt: skip
    return StageRecord(arch="a", top1=1, epochs=1, train_seconds=1, params=1, logit_scale=scale)


def test_match_resolves_to_the_ratio_of_training_medians_and_a_number_stays_itself():
    records = {"standard_teacher": _record(2.0), "generous_teacher": _record(8.0)}
    cfg = RunConfig.model_validate({"student": {"kd": {"teacher_scale": "match:standard_teacher"}}})
    assert cfg.student.kd.teacher_scale == MatchScale(match="standard_teacher")
    assert resolve_scale(cfg, "generous_teacher", records) == 0.25
    assert resolve_scale(RunConfig.model_validate({"student": {"kd": {"teacher_scale": 3}}}), "x", {}) == 3.0
    with pytest.raises(UserError, match="no logit scale of standard_teacher on the training split"):
        resolve_scale(cfg, "generous_teacher", {**records, "standard_teacher": _record(None)})
    resolved = with_scale(cfg, 0.25)
    assert resolved.student.kd.teacher_scale == 0.25
    assert cfg.student.kd.teacher_scale == MatchScale(match="standard_teacher"), "the run's configuration is unchanged"


def test_the_students_temperature_is_its_methods_or_kds():
    assert student_temperature(RunConfig.model_validate({"student": {"method": "dkd", "dkd": {"temperature": 2}}})) == 2
    assert student_temperature(RunConfig.model_validate({"student": {"method": "lskd", "kd": {"temperature": 7}}})) == 7


def test_a_scaled_teacher_is_kd_on_its_scaled_logits_at_the_same_temperature_and_weight():
    cfg = StudentConfig(train=TrainConfig(epochs=1), kd={"teacher_scale": 2.5, "temperature": 20.0, "kd_weight": 0.9})
    g = torch.Generator().manual_seed(2)
    s, t, y = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    kd = objectives.student_objective(cfg)(s, t, y, 1.0)["kd"]
    assert kd.item() == pytest.approx(0.9 * losses.kd_loss(s, 2.5 * t, 20.0).item(), rel=1e-6)
    unscaled = objectives.student_objective(
        cfg.model_copy(update={"kd": cfg.kd.model_copy(update={"teacher_scale": 1.0})})
    )
    assert unscaled(s, t, y, 1.0)["kd"].item() != pytest.approx(kd.item())


def test_an_unresolved_match_never_reaches_a_loss():
    cfg = StudentConfig(kd={"teacher_scale": "match:standard_teacher"})
    with pytest.raises(TypeError, match="must be resolved"):
        objectives.student_objective(cfg)


@pytest.mark.parametrize("value", ["bogus", "match:", -1, 0])
def test_a_bad_teacher_scale_is_one_clear_error(value):
    from gtcompress.typed import validate

    with pytest.raises(UserError, match="student.kd.teacher_scale"):
        validate(RunConfig, {"student": {"kd": {"teacher_scale": value}}}, "configuration")
