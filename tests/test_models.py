import time

import pytest
import timm
import torch
from timm.models import save_for_hf

from gtcompress.errors import UserError
from gtcompress.models import (
    ModelSpec,
    base_arch,
    count_macs,
    count_params,
    create_model,
    load_model,
    load_weights,
    resolve_model_name,
    save_checkpoint,
)


@pytest.mark.parametrize(
    "name, resolved, says",
    [
        ("resnet50", "resnet50", False),
        ("mobilenetv3_small", "mobilenetv3_small_100", True),
        ("mobilenetv3-large", "mobilenetv3_large_100", True),
        ("resnet50.a1_in1k", "resnet50.a1_in1k", False),
        ("test_resn", "test_resnet", True),
    ],
)
def test_model_names_resolve(name, resolved, says):
    got, note = resolve_model_name(name)
    assert got == resolved
    assert (note is not None) == says
    if says:
        assert resolved in note


def test_unknown_model_suggests_close_matches():
    with pytest.raises(UserError) as err:
        resolve_model_name("resnt50")
    assert "unknown timm model" in err.value.message and "resnet50" in err.value.hint


def test_ambiguous_prefix_lists_candidates():
    with pytest.raises(UserError, match="ambiguous") as err:
        resolve_model_name("efficientnet_b")
    assert "efficientnet_b0" in err.value.message


def test_hub_and_local_names_pass_unmangled_and_bring_their_weights(tmp_path):
    source = create_model("test_resnet", 10).eval()
    folder = tmp_path / "my-model.v1"
    save_for_hf(source, folder, safe_serialization=True)
    name = f"local-dir:{folder}"
    resolved, note = resolve_model_name(name)
    assert resolved == name and "test_resnet" in note
    assert base_arch(name) == "test_resnet" and base_arch("resnet50.a1_in1k") == "resnet50.a1_in1k"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(create_model(name, 10).eval()(x), source(x))
    other = create_model(name, 5)  # another data set: timm resets the classifier, the rest is the folder's
    head = source.pretrained_cfg["classifier"]
    assert other.num_classes == 5
    kept = {k: v for k, v in source.state_dict().items() if not k.startswith(head)}
    assert all(torch.equal(other.state_dict()[k], v) for k, v in kept.items())


def test_names_that_look_like_hub_ids_say_which_prefix_to_use():
    with pytest.raises(UserError, match="hf-hub:someone/model"):
        resolve_model_name("someone/model")


def spec(arch="test_resnet", num_classes=10):
    return ModelSpec(arch, num_classes, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), tuple(str(i) for i in range(num_classes)))


def test_checkpoint_rebuilds_the_model_without_a_recipe(tmp_path):
    model = create_model("test_resnet", 10).eval()
    save_checkpoint(tmp_path / "m.pt", model, spec(), "student", {"top1": 50.0})
    rebuilt, got_spec, ckpt = load_model(tmp_path / "m.pt")
    assert got_spec == spec() and ckpt["metrics"] == {"top1": 50.0} and ckpt["stage"] == "student"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), model(x))
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temporary file"


def test_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    model = create_model("test_resnet", 10)
    save_checkpoint(tmp_path / "m.pt", model, spec(), "student", {})
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_model(tmp_path / "cut.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not a gtcompress checkpoint"):
        load_model(tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_load_weights_accepts_timm_style_state_dicts(tmp_path):
    source = create_model("test_resnet", 10)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ddp.pth")
    target = create_model("test_resnet", 10)
    load_weights(target, tmp_path / "ddp.pth", "test_resnet", 10)
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v)


def test_load_weights_rejects_wrong_class_count_and_architecture(tmp_path):
    torch.save(create_model("test_resnet", 1000).state_dict(), tmp_path / "in1k.pth")
    with pytest.raises(UserError, match="1000 classes but the data set has 10"):
        load_weights(create_model("test_resnet", 10), tmp_path / "in1k.pth", "test_resnet", 10)
    torch.save(create_model("test_efficientnet", 10).state_dict(), tmp_path / "other.pth")
    with pytest.raises(UserError, match="does not fit test_resnet"):
        load_weights(create_model("test_resnet", 10), tmp_path / "other.pth", "test_resnet", 10)
    save_checkpoint(tmp_path / "gt.pt", create_model("test_efficientnet", 10), spec("test_efficientnet"), "x", {})
    with pytest.raises(UserError, match="holds a test_efficientnet") as err:
        load_weights(create_model("test_resnet", 10), tmp_path / "gt.pt", "test_resnet", 10)
    assert "--teacher test_efficientnet" in err.value.hint


def test_pretrained_without_network_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(UserError, match="could not load pretrained weights") as err:
        create_model("mobilenetv3_small_050", 10, pretrained=True)
    assert time.perf_counter() - start < 5
    assert "internet" in err.value.hint


def test_size_counts():
    model = timm.create_model("resnet18", num_classes=10)
    assert count_params(model) == 11_181_642
    # resnet18 at 224px is 1.82 GMACs for 1000 classes; the conv trunk dominates at any class count.
    assert 1.7e9 < count_macs(model, 224) < 1.9e9
    assert count_macs(model, 32) < count_macs(model, 64)


@pytest.mark.parametrize(
    "arch, stem_stride", [("resnet18", 4), ("resnet10t", 4), ("mobilenetv3_small_050", 2), ("mobilenetv2_050", 2)]
)
def test_small_stem_keeps_32px_inputs_at_full_resolution_into_the_first_block(arch, stem_stride):
    plain, small = create_model(arch, 10).eval(), create_model(arch, 10, small_stem=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = plain.forward_features(x), small.forward_features(x)
        assert small(x).shape == (2, 10)
    assert b.shape[-1] == stem_stride * a.shape[-1], "the ImageNet stem's stride is gone"
    first = next(m for m in small.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.kernel_size == (3, 3) and first.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in small.modules())


def test_small_stem_is_refused_for_other_families():
    with pytest.raises(UserError, match="--small-stem is not defined for convnext_atto") as err:
        create_model("convnext_atto", 10, small_stem=True)
    assert "ResNet, MobileNet or EfficientNet" in err.value.hint


def test_a_small_stem_checkpoint_rebuilds_with_its_stem(tmp_path):
    model = create_model("test_resnet", 10, small_stem=True).eval()
    stem_spec = ModelSpec(**{**spec().__dict__, "small_stem": True})
    save_checkpoint(tmp_path / "m.pt", model, stem_spec, "student", {})
    rebuilt, got, _ = load_model(tmp_path / "m.pt")
    x = torch.randn(2, 3, 32, 32)
    assert got.small_stem and torch.equal(rebuilt(x), model(x))
