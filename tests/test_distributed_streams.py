"""DDP under torchrun with streamed data (webdataset shards): each rank reads its own share, every rank takes the
same number of steps, and a layout that would leave a rank without data is refused (apart from
test_distributed.py so that the two files run side by side)."""

import json

import pytest
from conftest import PAIR, assert_recorded_accuracy_is_the_saved_models, write_wds_digits
from test_distributed import torchrun


@pytest.mark.slow
def test_two_processes_stream_disjoint_shares_of_webdataset_shards(tmp_path):
    pytest.importorskip("webdataset", reason="the [wds] extra is part of the README's test install")
    root = write_wds_digits(tmp_path / "shards", per_split=(("train", 240, 4), ("validation", 60, 2)))
    out = tmp_path / "run"
    result = torchrun(
        "distill", *PAIR, "--dataset", "wds/digits", "--data-root", root, "--img-size", 32, "--epochs", 1, "--out", out
    )
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("standard_teacher", "generous_teacher", "student"):
        m = metrics[stage]
        # each rank read its own half of the shards: 240 images in all, not 240 per rank
        assert round(m["images_per_second"] * m["train_seconds"]) == 240, stage
        assert_recorded_accuracy_is_the_saved_models(m, out / f"{stage}.pt")  # 2 equal shards: every image once


@pytest.mark.slow
@pytest.mark.parametrize(
    "shards, workers, per_rank",
    [((125, 115), 2, "0 loader worker(s) per rank"), ((80, 80, 80), 2, "0 loader worker(s) per rank")],
    ids=["two-unequal-shards-two-workers", "three-shards-two-ranks"],
)
def test_uneven_stream_layouts_train_every_rank_for_the_same_steps(tmp_path, shards, workers, per_rank):
    pytest.importorskip("webdataset", reason="the [wds] extra is part of the README's test install")
    root = write_wds_digits(tmp_path / "shards", per_split=(("train", 240, shards), ("validation", 60, 2)))
    out = tmp_path / "run"
    result = torchrun(
        "distill", *PAIR, "--dataset", "wds/digits", "--data-root", root, "--img-size", 32, "--epochs", 1,
        "--out", out, "--set", f"data.workers={workers}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("training stream:")]
    assert len(said) == 1 and per_rank in said[0], "rank 0 says it, once"
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("standard_teacher", "generous_teacher", "student"):
        m = metrics[stage]  # both ranks took ceil(240 / 2) = 120 images: 240 in all, whatever their shards hold
        assert round(m["images_per_second"] * m["train_seconds"]) == 240, stage


@pytest.mark.slow
def test_a_stream_with_fewer_shards_than_ranks_is_refused_before_anything_is_written(tmp_path):
    pytest.importorskip("webdataset", reason="the [wds] extra is part of the README's test install")
    root = write_wds_digits(tmp_path / "shards", per_split=(("train", 120, 1), ("validation", 60, 2)))
    result = torchrun("distill", *PAIR, "--dataset", "wds/digits", "--data-root", root, "--out", tmp_path / "run")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: the training stream has 1 shard(s) for 2 ranks: a rank without a shard reads nothing (write "
        "at least 2 training shards (best: a multiple of ranks x loader workers), or run fewer ranks)"
    ]
    assert not (tmp_path / "run").exists()
