"""Recipe validation: errors carry the key path, the value and what is allowed."""

from pathlib import Path

import pytest
import yaml

from slimformer.errors import RecipeError
from slimformer.pipeline.recipe import dump_recipe, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]


def base() -> dict:
    return {
        "teacher": {"model": "some/teacher"},
        "student": {"layers": 3},
        "data": {"train": "train.tsv"},
        "stages": [{"distill": {"epochs": 1}}],
    }


def error_of(tree: dict) -> str:
    with pytest.raises(RecipeError) as e:
        parse_recipe(tree, "r.yaml")
    return str(e.value)


def test_unknown_key_names_path_and_allowed_keys():
    tree = base()
    tree["stages"][0]["distill"]["temprature"] = 2
    msg = error_of(tree)
    assert "stages.0.distill.temprature" in msg and "unknown key" in msg
    assert "temperature" in msg  # the allowed keys are listed


def test_unknown_top_level_key():
    tree = base() | {"studnet": {}}
    msg = error_of(tree)
    assert "studnet" in msg and "student" in msg


@pytest.mark.parametrize("value", [0, -1, {"schedule": "linear", "start": 5, "end": 0}])
def test_temperature_must_be_positive(value):
    tree = base()
    tree["stages"][0]["distill"]["temperature"] = value
    msg = error_of(tree)
    assert "stages.0.distill.temperature" in msg and "> 0" in msg


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_alpha_must_be_in_unit_interval(value):
    tree = base()
    tree["stages"][0]["distill"]["alpha"] = value
    msg = error_of(tree)
    assert "stages.0.distill.alpha" in msg and "[0, 1]" in msg and str(value) in msg


def test_wrong_type_is_reported_with_value():
    tree = base()
    tree["stages"][0]["distill"]["batch_size"] = "big"
    msg = error_of(tree)
    assert "stages.0.distill.batch_size" in msg and "'big'" in msg


def test_distill_without_teacher_is_rejected():
    tree = base()
    del tree["teacher"]
    assert "needs a teacher" in error_of(tree)


def test_stage_needs_exactly_one_kind():
    tree = base()
    tree["stages"] = [{"distill": {}, "finetune": {}}]
    assert "exactly one" in error_of(tree)


def test_overrides_and_resolved_dump(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base()))
    schedule = "stages.0.distill.temperature={schedule: linear, start: 5, end: 1}"
    recipe = load_recipe(path, ["stages.0.distill.epochs=2", "seed=7", schedule])
    assert recipe.stages[0].distill.epochs == 2 and recipe.seed == 7
    assert recipe.stages[0].distill.temperature.start == 5
    again = parse_recipe(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe


def test_bad_override_syntax(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base()))
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(path, ["seed"])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    load_recipe(path)


@pytest.mark.parametrize(
    "key, value",
    [("teacher_precision", "fp16"), ("mixed_precision", "int8")],
)
def test_bad_precision_names_key_and_choices(key, value):
    tree = base()
    tree["stages"][0]["distill"][key] = value
    msg = error_of(tree)
    assert f"stages.0.distill.{key}" in msg and value in msg and "bf16" in msg


@pytest.mark.parametrize(
    "key, bad, named, good",
    [
        ("fast_dropout", "maybe", ["'auto'", "boolean"], "auto"),
        ("embedding_rows", "used", ["'seen'", "'all'"], "all"),
    ],
)
def test_bad_training_choice_names_key_and_choices(key, bad, named, good):
    tree = base()
    tree["stages"][0]["distill"][key] = bad
    msg = error_of(tree)
    assert f"stages.0.distill.{key}" in msg and all(n in msg for n in named)
    tree["stages"][0]["distill"][key] = good
    assert getattr(parse_recipe(tree).stages[0].distill, key) == good


def test_bad_selection_sampling_names_key_and_choices():
    tree = base()
    tree["stages"][0]["distill"]["selection"] = {"fraction": 0.3, "sampling": "softmax"}
    msg = error_of(tree)
    assert "selection.sampling" in msg and "proportional" in msg and "stratified" in msg
    tree["stages"][0]["distill"]["selection"] = {"fraction": 0.3, "score_bins": 0}
    msg = error_of(tree)
    assert "selection.score_bins" in msg and "greater than or equal to 1" in msg
