"""gtcompress publish: a folder timm loads as it is, a card whose numbers are the report's, ONNX files that pass the
run's verification, --push failing cleanly offline, and hub or local names in as teachers."""

import json
import re
import shutil

import pytest
import timm
import torch
import yaml
from conftest import INT8_TOLERANCE, STUDENT, assert_one_line_error, copy_run, distill, invoke, shared
from timm.data import create_transform, resolve_data_config

from gtcompress.backends.onnxruntime_runner import OnnxRuntimeBackend
from gtcompress.backends.torch_runner import TorchBackend
from gtcompress.config import RunConfig
from gtcompress.data import build_transform, load_splits
from gtcompress.evaluate import agreement, evaluate_artefact, load_eval_data, predict, tolerance_failure
from gtcompress.models import load_model
from gtcompress.settings import parse_tolerances

FILES = ("config.json", "model.safetensors", "README.md", "report.json", "onnx/model.onnx", "onnx/model.json")


@pytest.fixture(scope="module")
def published(workflow_run, tmp_path_factory):
    """(run, folder): a copy of the session's finished run, published once."""

    def make(d):
        run = copy_run(workflow_run, d / "run")
        result = invoke("publish", run, "--out", d / "published")
        assert result.exit_code == 0, result.output

    root = shared(tmp_path_factory, "published", make)
    return root / "run", root / "published"


def run_data(run):
    return RunConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text())).data


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def test_timm_loads_the_folder_and_predicts_as_the_run(published):
    """One line of timm, and timm's own preprocessing from config.json, give the run's predictions on the test split."""
    run, folder = published
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    reference, spec, _ = load_model(run / "student.pt")
    data = run_data(run)
    splits = load_splits(data)
    ours = build_transform(data, splits, spec.img_size, spec.mean, spec.std, training=False)
    theirs = create_transform(**resolve_data_config({}, model=model))
    images = [splits.val[i][0] for i in range(len(splits.val))]
    x_timm, x_run = torch.stack([theirs(im) for im in images]), torch.stack([ours(im) for im in images])
    torch.testing.assert_close(x_timm, x_run)
    with torch.no_grad():
        got, expected = model(x_timm), reference(x_run)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    torch.testing.assert_close(got, expected)
    assert model.pretrained_cfg["label_names"] == list(spec.class_names)
    assert json.loads((folder / "config.json").read_text())["architecture"] == spec.arch


def test_card_metadata_parses_and_its_numbers_are_the_reports(published):
    run, folder = published
    card = (folder / "README.md").read_text()
    meta = front_matter(card)
    report = json.loads((run / "report.json").read_text())
    assert json.loads((folder / "report.json").read_text()) == report
    assert meta["library_name"] == "timm" and meta["datasets"] == ["digits"] and meta["license"] == "other"
    assert {"timm", "knowledge-distillation", "image-classification"} <= set(meta["tags"])
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "test"
    rows = {r["precision"]: r for r in report["rows"] if r["stage"] == "student"}
    assert {m["name"]: m["value"] for m in result["metrics"]} == {
        "top-1 accuracy (PyTorch fp32)": round(rows["fp32"]["top1"], 2),
        "top-1 accuracy (ONNX int8)": round(rows["int8"]["top1"], 2),
    }
    body = card[card.index("\n---\n", 4) :]
    measured = [b for b in report["bench"] if b["stage"] == "student"]
    best = {}  # each artefact's fastest setting per backend and batch: what the card shows
    for b in measured:
        key = (b["backend"], b["precision"], b["batch_size"])
        best[key] = min(best.get(key, b["p50_ms"]), b["p50_ms"])
    assert best and all(f"{p50:.3f}" in body for p50 in best.values())
    assert report["header"]["machine"] in body and f"{rows['int8']['bytes'] / 1e6:.2f}" in body
    assert "KD (Hinton" in body and "Generous Teacher" in body and "## Limits" in body


def test_the_cards_code_runs_and_prints_the_models_prediction(published, tmp_path, monkeypatch, capsys):
    """The card's two snippets (timm, onnxruntime), run as they are beside the folder on a test image."""
    run, folder = published
    blocks = re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S)
    assert len(blocks) == 2
    data = run_data(run)
    reference, spec, _ = load_model(run / "student.pt")
    splits = load_splits(data)
    x = build_transform(data, splits, spec.img_size, spec.mean, spec.std, training=False)(splits.val[0][0])[None]
    splits.val[0][0].save(tmp_path / "image.png")
    (tmp_path / folder.name).symlink_to(folder)
    monkeypatch.chdir(tmp_path)
    int8 = OnnxRuntimeBackend(folder / "onnx" / "model.int8.onnx", "cpu", "int8").infer(x.numpy())
    with torch.no_grad():
        expected = [spec.class_names[int(reference(x).argmax())], spec.class_names[int(int8.argmax())]]
    for code, label in zip(blocks, expected):
        exec(code, {})
        assert capsys.readouterr().out.strip() == label


def test_onnx_files_in_the_folder_pass_the_runs_verification(published):
    """Each ONNX file in the folder, described by the folder's model.json, is the verified artefact of the run."""
    run, folder = published
    model, spec, _ = load_model(run / "student.pt")
    data = load_eval_data(run_data(run), spec)
    reference = predict(TorchBackend(model, "cpu", "fp32"), data, 64)
    tolerances = parse_tolerances([INT8_TOLERANCE])  # what the run's export was held to
    export = json.loads((run / "metrics.json").read_text())["export"]
    records = {r["path"]: r for r in export if r["backend"] == "onnxruntime"}  # what the files are evaluated on
    for name, precision in (("model.onnx", "fp32"), ("model.int8.onnx", "int8")):
        path = folder / "onnx" / name
        stats = agreement(predict(OnnxRuntimeBackend(path, "cpu", precision), data, 64), reference, data.labels)
        assert tolerance_failure(stats, tolerances[precision]) is None, (name, stats)
        record = records[f"export/student{'' if precision == 'fp32' else '.int8'}.onnx"]
        assert stats["top1"] == record["top1"]
        assert evaluate_artefact(path, dataset="digits")["top1"] == record["top1"]


def test_push_without_network_is_one_line_and_leaves_the_folder_complete(published, tmp_path):
    run, _ = published
    out = tmp_path / "to-push"
    result = invoke("publish", run, "--out", out, "--push", "someone/distilled-digits", "--license", "mit")
    assert_one_line_error(result, "could not push to someone/distilled-digits", f"{out} is complete")
    assert all((out / name).is_file() for name in FILES)
    assert 'timm.create_model("hf-hub:someone/distilled-digits"' in (out / "README.md").read_text()
    assert front_matter((out / "README.md").read_text())["license"] == "mit"
    assert timm.create_model(f"local-dir:{out}", pretrained=True).num_classes == 10


def test_an_out_folder_is_replaced_only_when_it_is_a_publish_folder(published, tmp_path):
    run, _ = published
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(invoke("publish", run, "--out", out), "not a gtcompress publish folder", "--force")
    assert (out / "notes.txt").read_text() == "mine"
    assert_one_line_error(invoke("publish", run, "--out", run.parent, "--force"), "holds the run")
    assert invoke("publish", run, "--out", out, "--force").exit_code == 0
    (out / "stray.txt").write_text("left from before")
    assert invoke("publish", run, "--out", out).exit_code == 0  # an earlier publish folder: replaced whole
    assert not (out / "stray.txt").exists() and all((out / name).is_file() for name in FILES)
    assert not list(tmp_path.glob(".mine.*")), "a temporary folder was left behind"


def test_a_run_without_an_onnx_export_of_the_stage_names_the_fix(published, tmp_path):
    run, _ = published
    result = invoke("publish", run, "--out", tmp_path / "out", "--stage", "standard_teacher")
    assert_one_line_error(result, "no verified ONNX export of standard_teacher", "gtcompress export")
    assert not (tmp_path / "out").exists()


def test_local_dir_names_without_a_model_folder_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, says in ((tmp_path / "missing", "no folder"), (tmp_path / "empty", "no config.json")):
        result = invoke("distill", "--teacher", f"local-dir:{folder}", "--student", STUDENT, "--out", tmp_path / "run")
        assert_one_line_error(result, says, "gtcompress publish")
    assert not (tmp_path / "run").exists()


def test_hf_hub_names_offline_are_one_line_naming_local_dir(tmp_path):
    result = invoke(
        "distill", "--teacher", "hf-hub:gtcompress-tests/never-published", "--student", STUDENT, "--out", tmp_path / "r"
    )
    assert_one_line_error(result, "hf-hub:gtcompress-tests/never-published", "local-dir:PATH")
    assert not (tmp_path / "r").exists()


def test_a_published_folder_is_a_teacher(published, tmp_path):
    """`--teacher local-dir:FOLDER` starts from the published weights; the run's checkpoints rebuild it without them."""
    run, folder = published
    source = shutil.copytree(folder, tmp_path / "digits-student.v1")  # dots and dashes pass unmangled
    name = f"local-dir:{source}"
    options = ("--epochs", 1, "--set", "teacher.train.epochs=0", "--set", "data.train_fraction=0.2")
    result = distill("--teacher", name, *options, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    teacher, original = metrics["standard_teacher"], json.loads((run / "metrics.json").read_text())["student"]
    assert teacher["arch"] == original["arch"] and teacher["source"] == name
    assert teacher["top1"] == original["top1"]  # the published model itself, on the same test split
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["teacher"]["arch"] == name
    shutil.rmtree(source)
    model, spec, _ = load_model(tmp_path / "run" / "standard_teacher.pt")
    assert spec.arch == original["arch"] and model.num_classes == 10
