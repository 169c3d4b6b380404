from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from gtcompress.config import DataConfig, SyntheticConfig
from gtcompress.data import Transformed, build_transform, create_loader, load_splits, synthetic_images
from gtcompress.distributed import DistEnv
from gtcompress.errors import UserError


def test_digits_is_a_fixed_stratified_split():
    splits = load_splits(DataConfig(name="digits"))
    assert (len(splits.train), len(splits.val), splits.num_classes) == (1437, 360, 10)
    counts = Counter(y for _, y in splits.val)
    assert min(counts.values()) >= 34 and max(counts.values()) <= 38
    again = load_splits(DataConfig(name="digits"))
    assert [y for _, y in again.val] == [y for _, y in splits.val]
    img, _ = splits.train[0]
    assert img.mode == "RGB" and img.size == (8, 8)


def test_train_fraction_keeps_every_class():
    splits = load_splits(DataConfig(name="digits", train_fraction=0.2))
    assert len(splits.train) == pytest.approx(287, abs=1)
    assert set(splits.train_targets) == set(range(10))
    assert len(splits.val) == 360


def test_synthetic_is_deterministic_and_sized():
    cfg = SyntheticConfig(num_classes=12, superclasses=3, train_per_class=5, val_per_class=2, seed=7)
    a, b = synthetic_images(cfg, 24), synthetic_images(cfg, 24)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    train_x, train_y, val_x, val_y = a
    assert train_x.shape == (60, 24, 24, 3) and train_x.dtype == np.uint8 and val_x.shape == (24, 24, 24, 3)
    assert sorted(set(train_y.tolist())) == list(range(12))
    other = synthetic_images(cfg.model_copy(update={"seed": 8}), 24)[0]
    assert not np.array_equal(train_x, other)


def _sibling_and_other_correlation(cfg: SyntheticConfig) -> tuple[float, float]:
    x, y, _, _ = synthetic_images(cfg, 16)
    n, groups = cfg.num_classes, cfg.superclasses
    corr = np.corrcoef(np.stack([x[y == c].astype(float).mean(0).ravel() for c in range(n)]))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    same = np.mean([corr[i, j] for i, j in pairs if i % groups == j % groups])
    other = np.mean([corr[i, j] for i, j in pairs if i % groups != j % groups])
    return same, other


def test_synthetic_superclasses_share_appearance():
    cfg = SyntheticConfig(num_classes=20, superclasses=4, train_per_class=30, noise=0.0, class_sep=0.5)
    same, other = _sibling_and_other_correlation(cfg)
    assert same > other + 0.3


def test_synthetic_blend_mixes_in_siblings_only():
    cfg = SyntheticConfig(num_classes=12, superclasses=3, train_per_class=40, noise=0.0, class_sep=2.0)
    same, other = _sibling_and_other_correlation(cfg)
    blended = cfg.model_copy(update={"blend": 0.45})
    same_blended, other_blended = _sibling_and_other_correlation(blended)
    assert same_blended > same + 0.15, "blending should make siblings look alike"
    assert abs(other_blended - other) < 0.02, "blending must not mix in other super-classes"
    a, b = synthetic_images(blended, 16), synthetic_images(blended, 16)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[1], synthetic_images(cfg, 16)[1])


def test_transforms_use_timm_and_give_normalised_tensors():
    cfg = DataConfig(name="digits")
    splits = load_splits(cfg)
    train = Transformed(splits.train, build_transform(cfg, splits, 32, (0.5,) * 3, (0.5,) * 3, training=True))
    val = Transformed(splits.val, build_transform(cfg, splits, 32, (0.5,) * 3, (0.5,) * 3, training=False))
    x, _ = val[0]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(val[0][0], val[0][0])
    assert train[0][0].shape == (3, 32, 32)


def test_recipe_augmentation_overrides_the_data_set_default():
    cfg = DataConfig(name="digits", augment={"hflip": 1.0})
    splits = load_splits(cfg)
    text = repr(build_transform(cfg, splits, 32, (0.5,) * 3, (0.5,) * 3, training=True))
    assert "RandomHorizontalFlip(p=1.0)" in text


def test_loaders_shard_the_data_exactly():
    data = list(range(10))
    shards = [
        [x for batch in create_loader(data, 4, training=False, workers=0, dist=DistEnv(r, r, 3)) for x in batch]
        for r in range(3)
    ]
    assert sorted(int(x) for s in shards for x in s) == data
    train = create_loader(data, 4, training=True, workers=0, dist=DistEnv(1, 1, 2))
    train.sampler.set_epoch(0)
    assert train.batch_size == 2 and sum(len(b) for b in train) == 4


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(value).integers(0, 30, (12, 12, 3))
    Image.fromarray((noise + value).astype(np.uint8)).save(path)


def test_imagefolder_skips_unreadable_files_and_reports_them(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(5):
            _png(tmp_path / cls / f"{i}.png", 40 * i)
    (tmp_path / "cat" / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "dog" / "empty.jpg").write_bytes(b"")
    splits = load_splits(DataConfig(name=f"imagefolder:{tmp_path}", val_fraction=0.4))
    assert splits.class_names == ["cat", "dog"]
    assert sorted(p.split("/")[-1] for p in splits.skipped) == ["broken.png", "empty.jpg"]
    assert len(splits.train) + len(splits.val) == 10


def test_imagefolder_with_train_and_val_folders(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("a", "b", "c"):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", 30 * i)
    splits = load_splits(DataConfig(name=f"imagefolder:{tmp_path}"))
    assert (len(splits.train), len(splits.val), splits.num_classes) == (12, 6, 3)


def test_undecodable_image_is_replaced_not_fatal(tmp_path):
    for cls in ("a", "b"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", 50 + i)
    good = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "0.png").write_bytes(good[: len(good) // 2])  # header intact, data truncated
    with pytest.raises(OSError):
        Image.open(tmp_path / "a" / "0.png").convert("RGB")
    splits = load_splits(DataConfig(name=f"imagefolder:{tmp_path}", val_fraction=0.5))
    assert splits.skipped == [] and len(splits.train) + len(splits.val) == 6
    images = [splits.train[i][0] for i in range(len(splits.train))] + [splits.val[i][0] for i in range(len(splits.val))]
    assert all(img.size == (12, 12) for img in images)


@pytest.mark.parametrize(
    "cfg, match",
    [(DataConfig(name="mnist"), "unknown data set"), (DataConfig(name="imagefolder:/no/such/dir"), "does not exist")],
)
def test_bad_data_sets_are_clear_errors(cfg, match):
    with pytest.raises(UserError, match=match):
        load_splits(cfg)


def test_empty_imagefolder_and_missing_cifar_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images under"):
        load_splits(DataConfig(name=f"imagefolder:{tmp_path / 'empty'}"))
    with pytest.raises(UserError, match="--download"):
        load_splits(DataConfig(name="cifar10", root=tmp_path))


def test_pad_crop_is_the_cifar_transform():
    cfg = DataConfig(name="digits", augment={"pad_crop": 4, "hflip": 0.5})
    splits = load_splits(cfg)
    transform = build_transform(cfg, splits, 32, (0.5,) * 3, (0.5,) * 3, training=True)
    text = repr(transform)
    assert "RandomCrop(size=(32, 32), padding=4)" in text and "RandomHorizontalFlip(p=0.5)" in text
    assert "RandomResizedCrop" not in text
    torch.manual_seed(0)
    crops = {tuple(transform(splits.train[0][0]).flatten()[:64].tolist()) for _ in range(8)}
    assert len(crops) > 1 and transform(splits.train[0][0]).shape == (3, 32, 32)
    eval_text = repr(build_transform(cfg, splits, 32, (0.5,) * 3, (0.5,) * 3, training=False))
    assert "RandomCrop" not in eval_text, "evaluation stays deterministic"
