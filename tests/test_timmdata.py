"""timm's dataset names: a local Hugging Face dataset (parquet files written from digits), read through timm."""

import importlib.util
import json
import logging

import numpy as np
import pytest
from conftest import INT8_TOLERANCE, assert_one_line_error, distill, invoke, png_bytes, write_wds_digits

from gtcompress.config import DataConfig
from gtcompress.data import create_loader, load_splits
from gtcompress.distributed import DistEnv
from gtcompress.evaluate import evaluate_artefact
from gtcompress.stream import Stream, uneven_reads, warn_uneven

datasets = pytest.importorskip("datasets", reason="the [hf] extra (datasets) is part of the README's test install")


def write_parquet_digits(root, splits=("train", "validation"), label="label", per_split=(300, 60), class_label=True):
    """digits as a Hugging Face dataset on disk: `<split>-00000-of-00001.parquet` with image bytes and a ClassLabel."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)
    labels = datasets.ClassLabel(names=[str(i) for i in range(10)]) if class_label else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), label: labels})
    start = 0
    for split, n in zip(splits, per_split):
        rows = {
            "image": [{"bytes": png_bytes(np.stack([im] * 3, -1)), "path": None} for im in images[start : start + n]],
            label: digits.target[start : start + n].tolist(),
        }
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
        start += n
    return root


@pytest.fixture(scope="module")
def hf_digits(tmp_path_factory):
    return write_parquet_digits(tmp_path_factory.mktemp("hfds") / "digits")


def test_a_local_hf_dataset_gives_its_splits_classes_and_labels(hf_digits):
    splits = load_splits(DataConfig(name=f"hfds/{hf_digits}"))
    assert len(splits.train) == 300 and len(splits.val) == 60 and splits.eval_split == "validation"
    assert splits.class_names == [str(i) for i in range(10)] and splits.num_classes == 10
    image, label = splits.train[0]
    assert image.mode == "RGB" and image.size == (8, 8) and label == splits.train_targets[0]


@pytest.mark.slow
def test_distill_and_export_run_end_to_end_on_a_local_hf_dataset(hf_digits, tmp_path):
    out = tmp_path / "run"
    result = distill("--dataset", f"hfds/{hf_digits}", "--img-size", 32, "--epochs", 1, "--out", out)
    assert result.exit_code == 0, result.output
    assert "evaluating on the 'validation' split" in result.stdout
    assert json.loads((out / "metrics.json").read_text())["student"]["epochs"] == 1
    export = invoke("export", out)
    assert export.exit_code == 0, export.output
    assert "verified export/student.onnx" in export.stdout and "60 hfds/" not in export.stderr
    record = json.loads((out / "metrics.json").read_text())["export"][0]
    assert record["test_images"] == 60, "the exported student is verified on its own data set's split"


def test_test_split_is_the_fallback_and_a_missing_label_column_is_one_line(tmp_path):
    root = write_parquet_digits(tmp_path / "t", splits=("train", "test"))
    assert load_splits(DataConfig(name=f"hfds/{root}")).eval_split == "test"
    other = write_parquet_digits(tmp_path / "o", label="digit")
    result = distill("--dataset", f"hfds/{other}", "--epochs", 1, "--out", tmp_path / "r")
    assert_one_line_error(result, "has no label column 'label'", "digit", "--set data.label_key=COLUMN")
    assert not (tmp_path / "r").exists(), "nothing half-written"


def test_a_missing_dataset_and_a_missing_extra_are_one_line_each(tmp_path, monkeypatch):
    result = distill("--dataset", f"hfds/{tmp_path / 'nothing-here'}", "--out", tmp_path / "r")
    assert_one_line_error(result, "has no readable 'train' split")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    result = distill("--dataset", "hfds/some/name", "--out", tmp_path / "r")
    assert_one_line_error(result, "hfds/ data sets need the datasets package", "pip install 'gtcompress[hf]'")
    if real("tensorflow_datasets") is None:
        tfds = distill("--dataset", "tfds/mnist", "--out", tmp_path / "r")
        assert_one_line_error(tfds, "tfds/ data sets need the tensorflow_datasets package", "tensorflow-datasets")
    streamed = distill("--dataset", "wds/x", "--data-root", tmp_path, "--set", "data.train_fraction=0.5")
    assert_one_line_error(streamed, "data.train_fraction needs random access")


# -- webdataset shards ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wds_digits(tmp_path_factory):
    pytest.importorskip("webdataset", reason="the [wds] extra is part of the README's test install")
    return write_wds_digits(tmp_path_factory.mktemp("wds") / "digits")


def test_webdataset_shards_stream_through_timms_reader(wds_digits):
    splits = load_splits(DataConfig(name="wds/digits", root=wds_digits))
    assert splits.streaming and splits.num_classes == 10 and splits.eval_split == "validation"
    samples = list(splits.train)
    assert len(samples) == 240 == len(splits.train)
    assert {image.mode for image, _ in samples} == {"RGB"} and {int(y) for _, y in samples} <= set(range(10))
    assert sorted(int(y) for _, y in splits.val) == sorted(load_digits_targets(240, 300))


@pytest.mark.parametrize(
    "lengths, readers, expected", [((30, 30), 2, (0, 0)), ((20, 20, 20), 2, (10, 10)), ((30, 30), 4, (0, 30))]
)
def test_uneven_reads_of_a_stream_by_several_readers(lengths, readers, expected):
    assert uneven_reads(lengths, readers) == expected


@pytest.mark.parametrize("shards, ranks", [(3, 2), (2, 4)])
def test_the_uneven_reads_are_what_timms_reader_does(tmp_path, shards, ranks):
    pytest.importorskip("webdataset")
    root = write_wds_digits(tmp_path / "d", per_split=(("train", 60, 1), ("validation", 60, shards)))
    read = []
    for rank in range(ranks):  # what torchrun's ranks read, without starting them
        val = load_splits(DataConfig(name="wds/digits", root=root)).val
        val.reader.dist_rank, val.reader.dist_num_replicas = rank, ranks
        read += [image.tobytes() for image, _ in val]
    assert (len(read) - len(set(read)), 60 - len(set(read))) == uneven_reads((60 // shards,) * shards, ranks)


def test_uneven_validation_shards_are_warned_of_once(tmp_path, caplog):
    pytest.importorskip("webdataset")
    root = write_wds_digits(tmp_path / "d", per_split=(("train", 60, 1), ("validation", 60, 3)))

    def loader(world):
        val = Stream(load_splits(DataConfig(name="wds/digits", root=root)).val, lambda x: x)
        return create_loader(val, 8, training=False, workers=0, dist=DistEnv(world_size=world))

    warn_uneven.cache_clear()  # a run starts here: an earlier test in this process may have warned of these shards
    # at the logger's own level: a library an earlier test imported may have raised the root logger's
    caplog.set_level(logging.WARNING, logger="gtcompress.stream")
    loader(2)
    stream_log = logging.getLogger("gtcompress.stream")
    state = (stream_log.disabled, stream_log.getEffectiveLevel(), stream_log.propagate, logging.getLogger().level)
    assert "reads 10 images again and leaves 10 out" in caplog.text, state
    caplog.clear()
    loader(2)
    assert caplog.text == "", "said once per run, not once per stage"
    loader(3)
    assert caplog.text == "", "three readers of three equal shards read each image once"


def load_digits_targets(start, stop):
    from sklearn.datasets import load_digits

    return load_digits().target[start:stop].tolist()


@pytest.mark.slow
def test_distill_and_export_run_end_to_end_on_shards(wds_digits, tmp_path):
    out = tmp_path / "run"
    result = distill(
        "--dataset", "wds/digits", "--data-root", wds_digits, "--img-size", 32, "--epochs", 1, "--out", out
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["student"]["epochs"] == 1
    int8 = ("export", out, "--export-precision", "int8", "--int8-max-drop", 0.5, "--tolerance", INT8_TOLERANCE)
    # accuracy-aware int8 holds out training images after the calibration ones: the stream's 240 has none after 256
    assert_one_line_error(invoke(*int8), "none beyond the 256 calibration images", "--calibration-images")
    export = invoke(*int8, "--calibration-images", 120)
    assert export.exit_code == 0, export.output
    records = json.loads((out / "metrics.json").read_text())["export"]
    assert {r["test_images"] for r in records} == {60}, "verified on the shards' own validation split"
    assert {r["heldout_images"] for r in records if r["precision"] == "int8"} == {120}
    for r in records:  # each recorded accuracy is what `gtcompress eval` measures on the same shards and backend
        assert r["top1"] == pytest.approx(evaluate_artefact(out / r["path"], backend=r["backend"])["top1"]), r["path"]


@pytest.mark.parametrize(
    "damage, fragments",
    [
        ("missing shard", ("shard", "train-0001.tar is missing")),
        ("no label", ("lacks its 'cls' label", "train-0000.tar")),
        ("counts disagree", ("holds 120 samples but _info.json says 121",)),
        ("no info", ("no _info.json in",)),
    ],
)
def test_bad_shards_are_one_line_each_and_write_nothing(tmp_path, damage, fragments):
    pytest.importorskip("webdataset")
    root = write_wds_digits(tmp_path / "d", drop_label_of="train" if damage == "no label" else None)
    info = json.loads((root / "_info.json").read_text())
    if damage == "missing shard":
        (root / "train-0001.tar").unlink()
    elif damage == "counts disagree":
        info["splits"]["train"]["shard_lengths"] = [121, 119]
        (root / "_info.json").write_text(json.dumps(info))
    elif damage == "no info":
        (root / "_info.json").unlink()
    result = distill("--dataset", "wds/digits", "--data-root", root, "--epochs", 1, "--out", tmp_path / "r")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "r").exists()


def test_classes_come_from_num_classes_when_the_data_set_has_no_names_and_a_class_map_reorders_them(tmp_path):
    plain = write_parquet_digits(tmp_path / "plain", class_label=False)
    result = distill("--dataset", f"hfds/{plain}", "--out", tmp_path / "r")
    assert_one_line_error(result, "the classes of", "are unknown", "data.num_classes=N")
    assert load_splits(DataConfig(name=f"hfds/{plain}", num_classes=10)).class_names[9] == "class_9"
    named = write_parquet_digits(tmp_path / "named")
    order = tmp_path / "classes.txt"
    order.write_text("".join(f"{i}\n" for i in reversed(range(10))))
    splits = load_splits(DataConfig(name=f"hfds/{named}", class_map=order))
    assert splits.class_names == [str(i) for i in reversed(range(10))]
    plain_targets = load_splits(DataConfig(name=f"hfds/{named}")).train_targets
    assert splits.train_targets == [9 - t for t in plain_targets], "labels follow the class map"
