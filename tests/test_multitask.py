"""Multi-task distillation: the mixed-task sampler, the shared-encoder model (save/load, one
pass for every head, export of one task), recipe checks, and a run end to end on tiny teachers
with real data slices (SST-2 classification, STS-B regression, CoNLL token classification)."""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertForSequenceClassification, PreTrainedTokenizerFast

from slimformer.data.multitask import MultiTaskBatchSampler, task_probabilities
from slimformer.errors import ModelError, RecipeError
from slimformer.pipeline.recipe import parse_recipe
from tests.conftest import SHARED, tiny_config, train_crashing_after, tsv_slices

STSB = SHARED / "data" / "stsb"


@pytest.fixture(scope="session")
def stsb_slice(tmp_path_factory) -> dict[str, Path]:
    return tsv_slices(STSB, tmp_path_factory.mktemp("stsb"), {"train": 128, "dev": 48})


@pytest.fixture(scope="session")
def tiny_regression_teacher(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("tiny_reg")
    config = tiny_config(num_labels=1, problem_type="regression", id2label={0: "LABEL_0"})
    config.label2id = {"LABEL_0": 0}
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def multitask_tree(teachers: dict, data: dict, **stage) -> dict:
    distill = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "save_every": 4}
    distill.update(stage)
    sst2, stsb, conll = data["sst2"], data["stsb"], data["conll"]
    return {
        "task": "multi-task",
        "seed": 0,
        "student": {"layers": 2},
        "tasks": {
            "sst2": {
                "task": "sequence-classification",
                "teacher": {"model": str(teachers["sst2"])},
                "data": {
                    "train": str(sst2["train"]),
                    "eval": str(sst2["dev"]),
                    "text_column": "sentence",
                    "max_length": 64,
                },
            },
            "stsb": {
                "task": "sequence-classification",
                "teacher": {"model": str(teachers["stsb"])},
                "data": {
                    "train": str(stsb["train"]),
                    "eval": str(stsb["dev"]),
                    "text_column": "sentence1",
                    "text_pair_column": "sentence2",
                    "label_column": "score",
                    "max_length": 64,
                },
                "weight": 2.0,
            },
            "ner": {
                "task": "token-classification",
                "teacher": {"model": str(teachers["ner"])},
                "data": {"train": str(conll["train"]), "eval": str(conll["dev"]), "max_length": 64},
            },
        },
        "multitask": {"sampling": "temperature", "temperature": 2.0, "encoder_from": "sst2"},
        "stages": [{"distill": distill}],
        "report": {"repeats": 2, "batch_sizes": [1, 4], "seq_len": 16},
    }


@pytest.fixture
def three_tasks(
    tiny_teacher, tiny_regression_teacher, tiny_ner_teacher, sst2_slice, stsb_slice, conll_slice
):
    teachers = {"sst2": tiny_teacher, "stsb": tiny_regression_teacher, "ner": tiny_ner_teacher}
    data = {"sst2": sst2_slice, "stsb": stsb_slice, "conll": conll_slice}
    return teachers, data


def test_task_probabilities_by_rule():
    sizes = {"big": 9000, "small": 1000}
    assert task_probabilities(sizes, "proportional") == pytest.approx({"big": 0.9, "small": 0.1})
    assert task_probabilities(sizes, "temperature", 2.0) == pytest.approx(
        {"big": 3 / 4, "small": 1 / 4}  # sqrt(9000) : sqrt(1000) = 3 : 1
    )
    assert task_probabilities(sizes, "round-robin") == {"big": 0.5, "small": 0.5}


@pytest.mark.parametrize(
    "rule, expected", [("proportional", 0.9), ("temperature", 0.75), ("round-robin", 0.5)]
)
def test_sampler_proportions_and_one_task_per_batch(rule, expected):
    lengths = {"big": [5] * 900, "small": [7] * 100}
    offsets = {"big": 0, "small": 900}
    sampler = MultiTaskBatchSampler(lengths, offsets, 10, rule, 2.0, seed=0)
    assert len(sampler) == 100  # an epoch = as many batches as both tasks have
    counts = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        for batch in sampler:
            big = [i < 900 for i in batch]
            assert all(big) or not any(big), "a batch mixes tasks"
            counts["big" if big[0] else "small"] += 1
    assert counts["big"] / sum(counts.values()) == pytest.approx(expected, abs=0.02)
    sampler.set_epoch(3)
    first = list(sampler)
    assert first == list(sampler), "the order must depend on (seed, epoch) only"
    sampler.set_epoch(4)
    assert first != list(sampler)


def test_small_task_starts_a_new_pass_when_it_runs_out():
    lengths = {"big": [5] * 1000, "small": [5] * 20}  # 2 batches of 10 for the small task
    sampler = MultiTaskBatchSampler(lengths, {"big": 0, "small": 1000}, 10, "round-robin", 1, 0)
    small = [b for b in sampler if b[0] >= 1000]
    assert len(small) == 51  # 102 batches in turn: far more than its 2 batches
    rows = Counter(i for b in small for i in b)
    assert set(rows) == set(range(1000, 1020))
    assert max(rows.values()) - min(rows.values()) <= 1  # whole passes, not random repeats


def test_recipe_checks_for_multitask(three_tasks):
    teachers, data = three_tasks
    tree = multitask_tree(teachers, data)
    tree["data"] = {"train": "x.tsv"}
    with pytest.raises(RecipeError, match="no top-level teacher/data"):
        parse_recipe(tree)
    tree = multitask_tree(teachers, data)
    tree["stages"] = [{"export": {}}]
    with pytest.raises(RecipeError, match="export-task"):
        parse_recipe(tree)
    tree = multitask_tree(teachers, data, augment={"copies": 1})
    with pytest.raises(RecipeError, match="augment is not supported .*tasks.NAME.augment"):
        parse_recipe(tree)


def test_tasks_with_different_tokenizers_are_refused(three_tasks, tmp_path, cache_dir):
    from slimformer.api import run

    teachers, data = three_tasks
    other = tmp_path / "other_tokenizer"
    shutil.copytree(teachers["stsb"], other)
    for f in [*other.glob("*token*"), *other.glob("vocab*")]:
        f.unlink()
    vocab = {"[UNK]": 0, "[PAD]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(other)
    teachers = {**teachers, "stsb": other}
    with pytest.raises(RecipeError, match="tasks.stsb and tasks.sst2 use different tokenizers"):
        run(multitask_tree(teachers, data), tmp_path / "run", cache_dir=str(cache_dir))
    tree = multitask_tree(three_tasks[0], data)
    tree["multitask"]["encoder_from"] = str(other)
    with pytest.raises(RecipeError, match="encoder_from .* uses a different tokenizer"):
        run(tree, tmp_path / "run", cache_dir=str(cache_dir))
    tree["multitask"]["encoder_from"] = "./mnli"
    with pytest.raises(RecipeError, match="neither a task"):
        run(tree, tmp_path / "run", cache_dir=str(cache_dir))
    tree["multitask"]["encoder_from"] = ["sst2", "./mnli"]  # every listed source is checked
    with pytest.raises(RecipeError, match="'./mnli' is neither a task"):
        run(tree, tmp_path / "run", cache_dir=str(cache_dir))
    assert not (tmp_path / "run.incomplete" / "stages").exists()  # refused before training


def test_multitask_distillation_end_to_end(three_tasks, tmp_path, cache_dir):
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
        pipeline,
    )

    from slimformer.api import export_task, run
    from slimformer.cli import main as cli_main
    from slimformer.models.multitask import load_multitask

    teachers, data = three_tasks
    report = run(multitask_tree(teachers, data), tmp_path / "run", cache_dir=str(cache_dir))
    assert set(report["tasks"]) == {"sst2", "stsb", "ner"}
    assert report["tasks"]["sst2"]["metric"] == "accuracy"
    assert report["tasks"]["stsb"]["metric"] == "spearman"
    assert report["tasks"]["ner"]["metric"] == "f1"
    for entry in report["tasks"].values():
        assert entry["metric"] in entry["teacher"]["metrics"]
        assert entry["metric"] in entry["student"]["metrics"]
    assert {"bs1", "bs4"} == set(report["speedup_vs_single_task_students"])
    stage = report["stages"][0]
    assert stage["sampling"]["rule"] == "temperature"
    assert stage["teacher_forward_examples"]["stsb"] == 128
    assert "retained_mean" in stage["evals"][-1]
    run_dir = tmp_path / "run"
    assert (run_dir / "report.html").is_file()

    # one multi-head model: one encoder pass gives every head's logits, as each head alone does
    model = load_multitask(run_dir / "model")
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    batch = tok(["a fine film", "the plot is thin"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        together = model.forward_all(**batch)
        for name in ("sst2", "stsb", "ner"):
            alone = model(task=name, **batch).logits
            torch.testing.assert_close(together[name], alone)
            standalone = model.standalone(name)(**batch).logits
            torch.testing.assert_close(standalone, alone)
    assert together["stsb"].shape == (2, 1)
    assert together["ner"].shape[:2] == batch["input_ids"].shape

    # each task exports as a standard transformers folder that pipeline() loads
    out = export_task(run_dir / "model", "sst2", tmp_path / "sst2")
    clf = AutoModelForSequenceClassification.from_pretrained(out)
    with torch.inference_mode():
        torch.testing.assert_close(clf(**batch).logits, together["sst2"])
    labels = {p["label"] for p in pipeline("text-classification", model=str(out))(["fine"])}
    assert labels <= {"negative", "positive"}
    ner_dir = tmp_path / "ner"
    assert (
        cli_main(["export-task", str(run_dir / "model"), "--task", "ner", "-o", str(ner_dir)]) == 0
    )
    assert AutoModelForTokenClassification.from_pretrained(ner_dir).config.num_labels == 9
    pipeline("token-classification", model=str(ner_dir))("Peter lives in Berlin")
    with pytest.raises(ModelError, match="No task 'mnli'"):
        export_task(run_dir / "model", "mnli", tmp_path / "x")
    with pytest.raises(ModelError, match="not a multi-task model folder"):
        export_task(ner_dir, "ner", tmp_path / "y")


def test_multitask_layerwise_terms_and_augmented_task(three_tasks, tmp_path, cache_dir):
    """Layer-wise terms against every task's own teacher on the shared encoder, and augmented
    copies for one task only (labeled by its teacher through the cache)."""
    from slimformer.api import run

    teachers, data = three_tasks
    tree = multitask_tree(
        teachers,
        data,
        intermediate={"terms": {"hidden_mse": 1.0, "attention_mse": 1.0}},
        max_steps=12,
    )
    tree["tasks"]["sst2"]["augment"] = {"copies": 2, "replace": 0.3, "candidates": 3}
    tree["tasks"]["stsb"]["augment"] = {"copies": 1, "replace": 0.3, "candidates": 3}
    report = run(tree, tmp_path / "run", cache_dir=str(cache_dir))
    stage = report["stages"][0]
    sst2_rows = len(pd.read_csv(data["sst2"]["train"], sep="\t"))
    assert stage["train_rows"] == {
        "sst2": 3 * sst2_rows,
        "stsb": 2 * 128,  # pairs: both texts of every copy edited, the teacher scores it
        "ner": stage["train_rows"]["ner"],
    }
    assert stage["per_task"]["sst2"]["augment"]["augmented_examples"] == 2 * sst2_rows
    assert all(" ||| " in e for e in stage["per_task"]["stsb"]["augment"]["examples"])
    assert "augment" not in stage["per_task"]["ner"]
    for name in ("sst2", "stsb", "ner"):
        mapping = stage["per_task"][name]["intermediate"]["layer_mapping"]
        assert mapping == {
            "student_0": "teacher_0",
            "student_1": "teacher_2",  # 2 of the tiny teachers' 4 layers, evenly
            "student_2": "teacher_4",
        }
    logged = {k for e in stage["evals"] for k in e}
    assert "retained_mean" in logged


def test_multitask_resume_matches_an_uninterrupted_run(
    three_tasks, tmp_path, cache_dir, monkeypatch
):
    import slimformer.pipeline.multitask.stages as mt_stages
    from slimformer.api import run
    from slimformer.models.multitask import load_multitask

    teachers, data = three_tasks
    tree = multitask_tree(teachers, data, save_every=3)
    tree["multitask"]["encoder_from"] = str(teachers["ner"])  # a model, not a task name
    full = run(tree, tmp_path / "full", cache_dir=str(cache_dir))
    with monkeypatch.context() as m:
        m.setattr(mt_stages, "train", train_crashing_after(5))
        with pytest.raises(KeyboardInterrupt):
            run(tree, tmp_path / "resumed", cache_dir=str(cache_dir))
    resumed = run(tree, tmp_path / "resumed", cache_dir=str(cache_dir), resume=True)
    assert resumed["stages"][0]["resumed_from_step"] == 3
    assert resumed["student"]["init"]["encoder_from"] == str(teachers["ner"])
    a = load_multitask(tmp_path / "full" / "model").state_dict()
    b = load_multitask(tmp_path / "resumed" / "model").state_dict()
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-5, err_msg=key)
    assert json.dumps(full["tasks"]["sst2"]["student"]["metrics"]) == json.dumps(
        resumed["tasks"]["sst2"]["student"]["metrics"]
    )


def test_regression_targets_are_read_from_the_data():
    from slimformer.pipeline.context import REGRESSION, _LabelConfig, _labels_from_data

    assert _labels_from_data(["5.000", "3.800", "0.000"]) == REGRESSION  # STS-B scores
    assert _labels_from_data(["1", "0", "1"]) == ["0", "1"]  # whole numbers: classes
    assert _labels_from_data(["1", "2", "1"], "regression") == REGRESSION
    with pytest.raises(RecipeError, match="'good' is not a number"):
        _labels_from_data(["good", "1.5"], "regression")
    config = _LabelConfig(REGRESSION)
    assert (config.num_labels, config.problem_type) == (1, "regression")


def test_a_metric_a_task_cannot_keep_is_refused_before_training(three_tasks, tmp_path, cache_dir):
    from slimformer.api import run

    tree = multitask_tree(*three_tasks)
    tree["tasks"]["stsb"]["metric"] = "mse"  # lower is better: not a metric to keep
    with pytest.raises(RecipeError, match="tasks.stsb.metric 'mse' is not a regression metric"):
        run(tree, tmp_path / "run", cache_dir=str(cache_dir))
    assert not (tmp_path / "run.incomplete" / "stages").exists()


def test_unknown_best_metric_names_the_metrics_there_are(tiny_teacher, sst2_slice, tmp_path):
    from slimformer.api import run
    from tests.conftest import sst2_recipe

    tree = sst2_recipe(tiny_teacher, sst2_slice, best_metric="acuracy", max_steps=2)
    with pytest.raises(RecipeError, match="best_metric 'acuracy' is not among .*accuracy"):
        run(tree, tmp_path / "run", cache_dir=str(tmp_path / "cache"))


def test_a_regression_teacher_distills_judged_by_spearman(
    tiny_regression_teacher, stsb_slice, tmp_path
):
    """Single-task KD from an STS-B-style teacher: checkpoints are chosen by Spearman (there
    is no accuracy) and the report's ``retained`` compares it with the teacher's."""
    from slimformer.api import run
    from tests.conftest import sst2_recipe

    tree = sst2_recipe(tiny_regression_teacher, stsb_slice, soft="mse", hard="mse", max_steps=4)
    tree["data"].update(text_column="sentence1", text_pair_column="sentence2", label_column="score")
    report = run(tree, tmp_path / "run", cache_dir=str(tmp_path / "cache"))
    assert "spearman" in report["stages"][0]["best"]  # chosen by it (no accuracy here)
    assert set(report["student"]["metrics"]) >= {"spearman", "pearson"}
    spearman = report["student"]["metrics"]["spearman"] / report["teacher"]["metrics"]["spearman"]
    assert report["retained"] == pytest.approx(spearman, abs=1e-4)


def test_hard_mse_leaves_out_rows_without_a_gold_score():
    from slimformer.methods.distill.losses.mse import hard_mse

    student = torch.tensor([[1.0], [2.0], [5.0]], requires_grad=True)
    labels = torch.tensor([0.0, float("nan"), 4.0])  # the middle row: an augmented pair
    loss = hard_mse(student, labels, torch.ones(3, dtype=torch.bool))
    assert loss.item() == pytest.approx((1.0 + 1.0) / 2)
    loss.backward()
    assert student.grad[1].item() == 0.0 and not torch.isnan(student.grad).any()


def test_encoder_from_several_sources_averages_their_copied_layers(three_tasks, cache_dir):
    from transformers import AutoModelForSequenceClassification

    from slimformer.pipeline.multitask.context import build_multitask_context

    teachers, data = three_tasks
    tree = multitask_tree(teachers, data)
    tree["student"] = {"layers": [0, 1]}
    tree["multitask"]["encoder_from"] = ["sst2", "stsb"]
    ctx = build_multitask_context(parse_recipe(tree), cache_dir=str(cache_dir))
    encoder = ctx.initial_student().encoder.state_dict()
    a, b = (
        AutoModelForSequenceClassification.from_pretrained(teachers[n]).bert.state_dict()
        for n in ("sst2", "stsb")
    )
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.1.output.dense.weight"):
        torch.testing.assert_close(encoder[key], (a[key] + b[key]) / 2)
    assert ctx.student_info["encoder_from"] == ["sst2", "stsb"]
    tree["multitask"]["encoder_from"] = ["sst2", "sst2"]
    with pytest.raises(RecipeError, match="name each source once"):
        parse_recipe(tree)


def test_averaging_encoders_of_different_shapes_names_the_weight():
    from slimformer.models.multitask import average_encoder_weights

    torch.manual_seed(0)
    narrow = BertForSequenceClassification(tiny_config(num_hidden_layers=1))
    wide = BertForSequenceClassification(
        tiny_config(num_hidden_layers=1, hidden_size=64, intermediate_size=128)
    )
    with pytest.raises(ModelError, match="embeddings.word_embeddings.weight is .* sources of one"):
        average_encoder_weights(narrow, [wide])
