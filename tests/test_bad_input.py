"""Every bad input gets a clear error before long work starts."""

import shutil

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from slimformer.errors import DataError, ModelError, OutputExistsError, RecipeError
from slimformer.pipeline.context import build_context
from slimformer.pipeline.recipe import parse_recipe
from slimformer.pipeline.runner import run_recipe
from tests.conftest import sst2_recipe


def context(tree):
    return build_context(parse_recipe(tree))


def test_missing_data_file(tiny_teacher, sst2_slice, tmp_path):
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["data"]["train"] = str(tmp_path / "missing.tsv")
    with pytest.raises(DataError, match="does not exist"):
        context(tree)


def test_unknown_column_lists_existing_ones(tiny_teacher, sst2_slice):
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["data"]["text_column"] = "review"
    with pytest.raises(DataError, match=r"review.*sentence"):
        context(tree)


def test_label_the_teacher_does_not_know(tiny_teacher, sst2_slice, tmp_path):
    bad = tmp_path / "train.tsv"
    bad.write_text("sentence\tlabel\ngood film\tpositive\nawful\tmeh\n", encoding="utf-8")
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["data"]["train"] = str(bad)
    with pytest.raises(DataError, match=r"'meh'.*0=negative, 1=positive"):
        context(tree)


def test_label_names_are_mapped_to_teacher_ids(tiny_teacher, sst2_slice, tmp_path):
    named = tmp_path / "train.tsv"
    named.write_text("sentence\tlabel\ngood film\tpositive\nawful\tnegative\n", encoding="utf-8")
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["data"]["train"] = str(named)
    assert context(tree).train_ds["labels"] == [1, 0]


def test_empty_dataset(tiny_teacher, sst2_slice, tmp_path):
    empty = tmp_path / "train.tsv"
    empty.write_text("sentence\tlabel\n", encoding="utf-8")
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["data"]["train"] = str(empty)
    with pytest.raises(DataError, match="no rows"):
        context(tree)


def test_non_utf8_file_names_the_line(tiny_teacher, sst2_slice, tmp_path):
    latin = tmp_path / "train.tsv"
    latin.write_bytes("sentence\tlabel\nfine\t1\ncaf\xe9 noir\t0\n".encode("latin-1"))
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["data"]["train"] = str(latin)
    with pytest.raises(DataError, match="line 3 is not valid UTF-8"):
        context(tree)


def test_more_student_layers_than_teacher(tiny_teacher, sst2_slice):
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["student"] = {"layers": 9}
    with pytest.raises(ModelError, match="only 4"):
        context(tree)


def test_missing_teacher_folder(sst2_slice, tmp_path):
    tree = sst2_recipe(tmp_path / "no_teacher", sst2_slice)
    with pytest.raises(ModelError, match="does not exist"):
        context(tree)


def test_student_with_another_tokenizer(tiny_teacher, sst2_slice, tmp_path):
    other = tmp_path / "other_student"
    shutil.copytree(tiny_teacher, other)
    for f in other.glob("*token*"):
        f.unlink()
    for f in other.glob("vocab*"):
        f.unlink()
    vocab = {"[UNK]": 0, "[PAD]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    ).save_pretrained(other)
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["student"] = {"model": str(other)}
    with pytest.raises(ModelError, match="different tokenizer"):
        context(tree)


def test_output_folder_exists_without_overwrite(tiny_teacher, sst2_slice, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_recipe(parse_recipe(sst2_recipe(tiny_teacher, sst2_slice)), out)


def test_bad_recipe_value_is_a_recipe_error():
    with pytest.raises(RecipeError):
        parse_recipe({"data": {"train": "x"}, "stages": []})


def test_cli_prints_one_paragraph_not_a_traceback(tmp_path, capsys):
    from slimformer.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: {train: x}\nstages: [{distill: {temperature: -1}}]\nteacher: {model: t}\n"
    )
    assert main(["run", str(recipe), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid recipe") and "Traceback" not in err
    assert "stages.0.distill.temperature" in err


def test_model_folder_without_weights(tmp_path, sst2_slice, tiny_teacher):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_teacher / "config.json").read_text())
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["student"] = {"model": str(empty)}
    with pytest.raises(ModelError, match="holds no weights"):
        context(tree)


def test_export_opset_out_of_range_is_a_recipe_error(tiny_teacher, sst2_slice):
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["stages"] = [{"export": {"opset": 9}}]
    with pytest.raises(RecipeError, match="stages.0.export.opset"):
        parse_recipe(tree)
