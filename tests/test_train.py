import pytest
import torch

from gtcompress.config import DataConfig, SyntheticConfig, TrainConfig
from gtcompress.data import Transformed, build_transform, create_loader, load_splits
from gtcompress.errors import UserError
from gtcompress.models import create_model
from gtcompress.objectives import ce_objective
from gtcompress.rundir import RunDir
from gtcompress.train import Context, Job, evaluate, fit, seed_everything


@pytest.fixture(scope="module")
def data():
    cfg = DataConfig(
        name="synthetic",
        img_size=16,
        synthetic=SyntheticConfig(num_classes=4, train_per_class=24, val_per_class=8, noise=0.1),
    )
    splits = load_splits(cfg)
    tf = lambda training: build_transform(cfg, splits, 16, (0.5,) * 3, (0.5,) * 3, training)  # noqa: E731
    return Transformed(splits.train, tf(True)), Transformed(splits.val, tf(False))


def make_stage(name="s", epochs=3, lr=0.05):
    seed_everything(0, 0)
    return Job(name, create_model("test_resnet", 4), TrainConfig(epochs=epochs, batch_size=16, lr=lr), ce_objective())


def context(tmp_path, data):
    return Context(run=RunDir(tmp_path), train_data=data[0], val_data=data[1], device=torch.device("cpu"))


def test_fit_learns_and_records_every_epoch(tmp_path, data):
    records = []
    stage = make_stage(epochs=4)
    metrics = fit(stage, context(tmp_path, data), 4, records.append)
    assert metrics["top1"] >= 60 and metrics["epochs"] == 4 and metrics["images_per_second"] > 0
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert RunDir(tmp_path).progress("s").exists()


def test_interrupted_fit_resumes_to_the_same_weights(tmp_path, data):
    whole = make_stage()
    fit(whole, context(tmp_path / "whole", data), 4, lambda r: None)

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(make_stage(), context(tmp_path / "cut", data), 4, stop_after_two)
    resumed = make_stage()
    seen = []
    fit(resumed, context(tmp_path / "cut", data), 4, seen.append)
    assert [r["epoch"] for r in seen] == [3]
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_zero_epochs_only_evaluates(tmp_path, data):
    stage = make_stage(epochs=0)
    before = {k: v.clone() for k, v in stage.model.state_dict().items()}
    metrics = fit(stage, context(tmp_path, data), 4, lambda r: pytest.fail("no epoch expected"))
    with torch.no_grad():  # a second computation: the untrained model's predictions over the whole split
        hits = sum(int((stage.model.eval()(x[None]).argmax(1) == y).item()) for x, y in data[1])
    assert metrics["epochs"] == 0 and metrics["top1"] == pytest.approx(100 * hits / len(data[1]))
    for k, v in stage.model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_evaluate_counts_exactly(tmp_path, data):
    model = create_model("test_resnet", 4).eval()
    ctx = context(tmp_path, data)
    loader = create_loader(data[1], 5, training=False, workers=0)
    got = evaluate(model, loader, ctx, 4)
    xs = torch.stack([x for x, _ in data[1]])
    ys = torch.tensor([y for _, y in data[1]])
    with torch.no_grad():
        logits = model(xs.to(memory_format=torch.channels_last))
    assert got["top1"] == pytest.approx(100 * (logits.argmax(1) == ys).float().mean().item())
    assert got["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, ys).item(), rel=1e-5)
    assert "top5" not in got


def test_diverging_loss_is_a_clear_error(tmp_path, data):
    stage = make_stage(epochs=1, lr=1e12)
    with pytest.raises(UserError, match="loss became"):
        fit(stage, context(tmp_path, data), 4, lambda r: None)


def test_cached_teacher_logits_train_exactly_like_a_live_teacher(tmp_path):
    from gtcompress.config import StudentConfig
    from gtcompress.objectives import student_objective

    cfg = DataConfig(
        name="synthetic",
        img_size=16,
        augment_train=False,
        synthetic=SyntheticConfig(num_classes=4, train_per_class=24, val_per_class=8, noise=0.1),
    )
    splits = load_splits(cfg)
    train = Transformed(splits.train, build_transform(cfg, splits, 16, (0.5,) * 3, (0.5,) * 3, training=True))
    val = Transformed(splits.val, build_transform(cfg, splits, 16, (0.5,) * 3, (0.5,) * 3, training=False))
    torch.manual_seed(1)
    teacher = create_model("test_resnet", 4).eval()
    objective = student_objective(StudentConfig(train=TrainConfig(epochs=2)))
    weights = []
    for cache in (None, train):
        seed_everything(0, 0)
        stage = Job("s", create_model("test_efficientnet", 4), TrainConfig(epochs=2, batch_size=16), objective, teacher)
        ctx = Context(
            run=RunDir(tmp_path / str(cache is None)),
            train_data=train,
            val_data=val,
            device=torch.device("cpu"),
            cache_data=cache,
        )
        fit(stage, ctx, 4, lambda r: None)
        weights.append(stage.model.state_dict())
    for k, v in weights[0].items():  # cached logits come from batches of another size: rounding, not exactness
        torch.testing.assert_close(weights[1][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_multistep_schedule_decays_at_the_recipes_milestones(tmp_path, data):
    seed_everything(0, 0)
    train = TrainConfig(epochs=3, batch_size=16, lr=0.1, sched="multistep", decay_milestones=(1, 2), decay_rate=0.2)
    records = []
    fit(Job("s", create_model("test_resnet", 4), train, ce_objective()), context(tmp_path, data), 4, records.append)
    # each epoch's record holds the lr after its last update: the next epoch's
    assert [r["lr"] for r in records] == pytest.approx([0.1 * 0.2, 0.1 * 0.2**2, 0.1 * 0.2**2])
