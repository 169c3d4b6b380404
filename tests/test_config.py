from pathlib import Path

import pytest
import yaml

from gtcompress.config import RunConfig, dump_config, load_config
from gtcompress.errors import UserError

RECIPES = Path(__file__).parent.parent / "recipes"


def test_default_recipe_is_the_built_in_default():
    assert load_config(RECIPES / "digits.yaml") == RunConfig()


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_validates(recipe):
    assert isinstance(load_config(recipe), RunConfig)


def test_overrides_win_over_the_recipe():
    cfg = load_config(RECIPES / "digits.yaml", {"student.train.epochs": 3, "generous.k": 4.0})
    assert cfg.student.train.epochs == 3 and cfg.generous.k == 4.0


def test_dump_then_load_round_trips(tmp_path):
    cfg = load_config(None, {"student.method": "dkd", "data.augment.hflip": 0.5})
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_recorded_environment_is_ignored_on_input(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"seed": 3, "environment": {"device": "cpu"}}))
    cfg = load_config(path)
    assert cfg.seed == 3 and cfg.environment is None


@pytest.mark.parametrize(
    "tree, expected",
    [
        ({"student": {"tempreature": 4}}, "unknown key 'student.tempreature'"),
        ({"teacher": {"train": {"epochs": "many"}}}, "'teacher.train.epochs'"),
        ({"student": {"method": "magic"}}, "'student.method'"),
        ({"generous": {"k": -1}}, "'generous.k'"),
    ],
)
def test_bad_recipe_keys_are_one_line_errors(tmp_path, tree, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(UserError) as err:
        load_config(path)
    assert expected in err.value.message and "\n" not in str(err.value)


def test_missing_and_malformed_recipes(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(UserError, match="mapping"):
        load_config(bad)


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_builds_its_models_and_optimizers(recipe, tmp_path, monkeypatch):
    from conftest import invoke

    monkeypatch.chdir(tmp_path)
    # The recipes' own data (CIFAR download, an ImageNet folder) and hub weights are not available here.
    result = invoke(
        "distill",
        "--recipe",
        recipe,
        "--dry-run",
        "--dataset",
        "synthetic",
        "--img-size",
        32,
        "--set",
        "teacher.pretrained=false",
        "--set",
        "data.workers=0",
        "--precision",  # the GPU recipes' bf16 is refused on a CPU without bf16 instructions, as this may be
        "fp32",
    )
    assert result.exit_code == 0, result.output
    cfg = load_config(recipe)
    for stage in ("standard_teacher", "generous_teacher", "student"):
        assert f"{stage}: " in result.output
    assert all(arch.split(".")[0] in result.output for arch in cfg.student.arch)
    assert not (tmp_path / "runs").exists()


def test_distills_options_take_their_help_from_the_keys_they_set():
    """One description per key: the option's help is the configuration field's, never a second text."""
    import typer.main

    from gtcompress.cli import app
    from gtcompress.options import OPTION_KEYS
    from gtcompress.typed import field_help

    distill = next(c for c in typer.main.get_command(app).commands.values() if c.name == "distill")
    helps = {p.name: p.help for p in distill.params}
    for option, key in OPTION_KEYS.items():
        assert helps[option] == field_help(RunConfig, key) != "", option
