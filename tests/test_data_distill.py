"""Selection math, curriculum ordering and multi-teacher combination, by hand."""

import math

import numpy as np
import pytest

from slimformer.errors import RecipeError
from slimformer.methods.data_distill.curriculum import curriculum_order, easy_to_hard, pacing
from slimformer.methods.data_distill.multi_teacher import check_label_sets, combine
from slimformer.methods.data_distill.selection import (
    disagreement,
    entropy,
    informativeness,
    label_conflicts,
    length_bins,
    margin,
    select,
    selection_stats,
    softmax,
)

PROBS = np.array([[0.5, 0.5], [0.9, 0.1], [0.99, 0.01], [0.3, 0.7]])


def test_entropy_margin_and_disagreement_by_hand():
    assert entropy(PROBS)[0] == pytest.approx(math.log(2))
    assert entropy(PROBS)[1] == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    assert margin(PROBS).tolist() == pytest.approx([0.0, 0.8, 0.98, 0.4])
    assert disagreement([PROBS, PROBS]) == pytest.approx(np.zeros(4))
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert disagreement([a, b])[0] == pytest.approx(math.log(2))  # JS of opposite certainties


def test_select_most_informative_fraction():
    scores = informativeness("entropy", [PROBS])
    assert select(scores, 0.5).tolist() == [0, 3]  # the two least certain
    assert select(informativeness("margin", [PROBS]), 0.25).tolist() == [0]
    assert len(select(informativeness("random", [PROBS], seed=1), 0.5)) == 2
    predicted = PROBS.argmax(-1)  # classes 0, 0, 0, 1
    balanced = select(scores, 0.5, predicted, class_balanced=True)
    assert balanced.tolist() == [0, 1, 3]  # half of each class: 2 of class 0's 3, 1 of class 1's 1
    stats = selection_stats(scores, balanced, predicted)
    assert stats["kept"] == 3 and stats["classes"]["1"] == {"all": 1, "kept": 1}


def test_skip_top_passes_over_the_most_ambiguous_rows_within_each_class():
    scores = informativeness("entropy", [PROBS])  # rank: 0, 3, 1, 2
    assert select(scores, 0.5, skip_top=0.25).tolist() == [1, 3]  # row 0 passed over
    assert select(scores, 0.75, skip_top=0.5).tolist() == [1, 2, 3]  # never fewer than k
    predicted = PROBS.argmax(-1)  # classes 0, 0, 0, 1
    balanced = select(scores, 1 / 3, predicted, class_balanced=True, skip_top=1 / 3)
    assert balanced.tolist() == [1, 3]  # class 0: row 0 skipped, row 1 kept; class 1 keeps its one


def test_label_conflicts_are_ranked_last_and_the_fraction_is_kept():
    """Row 0 (the least certain) contradicts its gold label: it gives way to the next most
    uncertain row; unlabeled rows (-100) never count as conflicts."""
    predicted = PROBS.argmax(-1)  # 0, 0, 0, 1
    conflicts = label_conflicts(predicted, np.array([1, 0, -100, 1]))
    assert conflicts.tolist() == [True, False, False, False]
    scores = informativeness("entropy", [PROBS])
    assert select(scores, 0.5, last=conflicts).tolist() == [1, 3]
    assert select(scores, 1.0, last=conflicts).tolist() == [0, 1, 2, 3]  # kept when needed
    assert len(select(scores, 0.5, sampling="proportional", last=conflicts)) == 2


def test_proportional_selection_is_seeded_and_favours_informative_rows():
    """Drawn without replacement with chance proportional to the score: the same seed gives the
    same rows, the kept rows score higher than average, and the lowest score (weight 0) is
    never drawn while positive ones remain."""
    scores = np.random.default_rng(0).random(20000)
    scores[0] = 0.0
    a = select(scores, 0.2, sampling="proportional", seed=3)
    assert a.tolist() == select(scores, 0.2, sampling="proportional", seed=3).tolist()
    assert a.tolist() != select(scores, 0.2, sampling="proportional", seed=4).tolist()
    assert len(a) == 4000 and 0 not in a
    # chance proportional to the score (uniform on [0, 1]): the mean of early draws is ~2/3,
    # above the top-k's ~0.9 and the population's 0.5
    assert 0.6 < scores[a].mean() < 0.75
    top = select(scores, 0.2)
    assert scores[top].min() > 0.79
    predicted = (scores > 0.5).astype(int)
    balanced = select(scores, 0.2, predicted, class_balanced=True, sampling="proportional")
    assert abs((predicted[balanced] == 1).mean() - (predicted == 1).mean()) < 0.01
    with pytest.raises(RecipeError, match="sampling"):
        select(scores, 0.2, sampling="softmax")


def test_stratified_selection_covers_every_score_bin_and_fills_sparse_ones_first():
    """Coverage-centric: the budget is shared from the smallest bin up, so a sparse bin is kept
    whole and the rest is split evenly; seeded; skip_top still passes over the top rows."""
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0.0, 0.1, 900), rng.uniform(0.9, 1.0, 100)])
    kept = select(scores, 0.3, sampling="stratified", score_bins=2, seed=1)
    assert len(kept) == 300
    assert (scores[kept] > 0.5).sum() == 100  # the sparse top bin whole, 200 from the dense one
    assert (
        kept.tolist() == select(scores, 0.3, sampling="stratified", score_bins=2, seed=1).tolist()
    )
    assert (
        kept.tolist() != select(scores, 0.3, sampling="stratified", score_bins=2, seed=2).tolist()
    )
    skipped = select(scores, 0.3, sampling="stratified", score_bins=2, skip_top=0.1)
    assert len(skipped) == 300 and scores[skipped].max() < 0.5  # the top 100 passed over
    uniform = np.arange(1000) / 1000
    per_bin = np.bincount(
        (uniform[select(uniform, 0.2, sampling="stratified", score_bins=4)] * 4).astype(int)
    )
    assert per_bin.tolist() == [50, 50, 50, 50]
    flagged = np.zeros(1000, dtype=bool)
    flagged[:10] = True
    assert not set(range(10)) & set(select(uniform, 0.2, sampling="stratified", last=flagged))


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_selection_fraction_outside_unit_interval(fraction):
    with pytest.raises(RecipeError, match=r"\(0, 1\]"):
        select(np.ones(4), fraction)


def test_disagreement_needs_two_teachers():
    with pytest.raises(RecipeError, match="two teachers"):
        informativeness("disagreement", [PROBS])


def test_pacing_and_curriculum_order():
    assert pacing("linear", 0, 0.3) == pytest.approx(0.3) and pacing("linear", 1, 0.3) == 1.0
    assert pacing("root", 0.25, 0.0) == pytest.approx(0.5)
    assert [pacing("step", p, 0.0, 3) for p in (0, 0.34, 0.67, 1)] == [0, 0.5, 1.0, 1.0]
    confidence = np.linspace(1.0, 0.0, 100)  # index 0 is the easiest
    assert easy_to_hard(confidence)[:3].tolist() == [0, 1, 2]
    batches = curriculum_order(confidence, num_batches=10, batch_size=10, pace="linear", start=0.2)
    assert max(batches[0]) < 20  # first batch: only the easiest 20%
    assert max(max(b) for b in batches[-2:]) >= 80  # the hardest examples arrive at the end
    assert all(len(b) == 10 and len(set(b)) == 10 for b in batches)
    again = curriculum_order(confidence, num_batches=10, batch_size=10, pace="linear", start=0.2)
    assert again == batches  # seeded


def test_multi_teacher_combination():
    a = np.log(np.array([[0.8, 0.2]]))
    b = np.log(np.array([[0.4, 0.6]]))
    fixed = softmax(combine([a, b], [3, 1]))
    assert fixed[0].tolist() == pytest.approx([0.7, 0.3])  # 0.75*0.8 + 0.25*0.4
    conf = softmax(combine([a, b], mode="confidence"))
    w_a = 0.8 / (0.8 + 0.6)
    assert conf[0, 0] == pytest.approx(w_a * 0.8 + (1 - w_a) * 0.4)
    with pytest.raises(RecipeError, match="non-negative"):
        combine([a, b], [1])


def test_teachers_with_different_label_sets_are_refused():
    check_label_sets([["neg", "pos"], ["neg", "pos"]], ["t1", "t2"])
    with pytest.raises(RecipeError, match="same label set"):
        check_label_sets([["neg", "pos"], ["pos", "neg"]], ["t1", "t2"])


def test_data_distillation_stage_end_to_end(tiny_teacher, sst2_slice, tmp_path, cache_dir):
    """64 labeled rows + the other 192 training rows as unlabeled text; the most uncertain half
    of the unlabeled rows is kept and batches follow a curriculum."""
    import json

    from slimformer.api import run
    from tests.conftest import sst2_recipe

    tree = sst2_recipe(
        tiny_teacher,
        sst2_slice,
        batch_size=16,
        selection={"criterion": "entropy", "fraction": 0.5, "skip_label_conflicts": True},
        curriculum={"pacing": "root", "start": 0.5},
        temperatures=[1.0, 2.0],
    )
    tree["data"] |= {"max_train_examples": 64, "unlabeled": {"source": "train-rest"}}
    report = run(tree, tmp_path / "dd", cache_dir=str(cache_dir))
    stage = report["stages"][0]
    assert stage["labeled_examples"] == 64 and stage["unlabeled_examples"] == 192
    assert stage["selection"]["kept"] == 96 and stage["selection"]["total"] == 192
    assert stage["selection"]["label_conflicts"] == {"all": 0, "kept": 0}  # unlabeled rows
    assert stage["steps"] == 10  # (64 + 96) / 16
    assert stage["curriculum"]["pacing"] == "root"
    saved = json.loads((tmp_path / "dd" / "stages" / "0-distill" / "selection.json").read_text())
    assert len(saved["kept_rows"]) == 160 and saved["kept_rows"][:64] == list(range(64))


def test_unlabeled_corpus_errors(tiny_teacher, sst2_slice, tmp_path, cache_dir):
    from slimformer.api import run
    from slimformer.errors import DataError, RecipeError, SlimformerError
    from tests.conftest import sst2_recipe

    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["data"]["unlabeled"] = {"source": "train-rest"}
    with pytest.raises(DataError, match="max_train_examples"):
        run(tree, tmp_path / "a", cache_dir=str(cache_dir))
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("sentence\tother\nfine film\tx\n")
    tree["data"]["unlabeled"] = {"source": str(corpus), "text_column": "review"}
    with pytest.raises(SlimformerError, match="review"):
        run(tree, tmp_path / "b", cache_dir=str(cache_dir))
    tree["data"].pop("unlabeled")
    tree["stages"][0]["distill"]["selection"] = {"fraction": 1.5}
    with pytest.raises(RecipeError, match=r"\(0, 1\]"):
        run(tree, tmp_path / "c", cache_dir=str(cache_dir))
    tree["stages"][0]["distill"]["selection"] = {"fraction": 0.5, "skip_top": 0.6}
    with pytest.raises(RecipeError, match="skip_top"):
        run(tree, tmp_path / "d", cache_dir=str(cache_dir))
    tree["stages"][0]["distill"]["selection"] = {"fraction": 0.5, "skip_top": 1.0}
    with pytest.raises(RecipeError, match="skip_top"):
        run(tree, tmp_path / "e", cache_dir=str(cache_dir))


def test_plain_text_corpus_one_example_a_line(tmp_path):
    from slimformer.data.readers import read_unlabeled

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a fine film\n\n  \nnot my thing\n", encoding="utf-8")
    ds = read_unlabeled(str(corpus), "sentence")
    assert ds["sentence"] == ["a fine film", "not my thing"]


def test_label_command_writes_parquet_and_fills_the_cache(tiny_teacher, tmp_path, capsys):
    import json

    import pyarrow.parquet as pq

    from slimformer.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a fine film\nnot my thing\n\nutterly dull\n", encoding="utf-8")
    args = [
        "label",
        "--teacher",
        str(tiny_teacher),
        "--corpus",
        str(corpus),
        "--output",
        str(tmp_path / "labels"),
        "--temperatures",
        "1,4",
        "--batch-size",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["examples"] == 3 and stats["teacher_forward_examples"] == 3
    table = pq.read_table(tmp_path / "labels" / "labels.parquet").to_pydict()
    assert table["text"] == ["a fine film", "not my thing", "utterly dull"]
    assert len(table["logits"][0]) == 2 and abs(sum(table["probs_t4"][0]) - 1) < 1e-6
    args[args.index(str(tmp_path / "labels"))] = str(tmp_path / "labels2")
    assert main(args) == 0  # same teacher, same corpus: all from the cache
    assert json.loads(capsys.readouterr().out)["teacher_forward_examples"] == 0
    missing = [
        "label",
        "--teacher",
        str(tiny_teacher),
        "--corpus",
        str(tmp_path / "c.tsv"),
        "--output",
        str(tmp_path / "x"),
        "--text-column",
        "review",
    ]
    (tmp_path / "c.tsv").write_text("sentence\nok\n")
    assert main(missing) == 2 and "review" in capsys.readouterr().err


def _second_teacher(tmp_path, tokenizer, **config):
    import torch
    from transformers import BertForSequenceClassification

    from tests.conftest import tiny_config

    torch.manual_seed(7)
    folder = tmp_path / "teacher2"
    BertForSequenceClassification(tiny_config(**config)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_two_teachers_mixed(tiny_teacher, sst2_slice, tmp_path, cache_dir, tokenizer):
    from slimformer.api import run
    from tests.conftest import sst2_recipe

    second = _second_teacher(tmp_path, tokenizer)
    tree = sst2_recipe(tiny_teacher, sst2_slice, batch_size=32)
    tree["teacher"] |= {"also": [{"model": str(second), "weight": 1.0}], "mix": "confidence"}
    report = run(tree, tmp_path / "mt", cache_dir=str(cache_dir))
    stage = report["stages"][0]
    assert stage["teacher_forward_examples"] == 2 * 256  # both teachers label every row once
    assert report["teacher"]["model"] == str(tiny_teacher)  # the report's teacher: the primary


def test_selection_by_teacher_disagreement(
    tiny_teacher, sst2_slice, tmp_path, cache_dir, tokenizer
):
    from slimformer.api import run
    from tests.conftest import sst2_recipe

    second = _second_teacher(tmp_path, tokenizer)
    tree = sst2_recipe(
        tiny_teacher,
        sst2_slice,
        selection={"criterion": "disagreement", "fraction": 0.25, "scope": "all"},
    )
    tree["teacher"] |= {"also": [{"model": str(second)}]}
    report = run(tree, tmp_path / "dis", cache_dir=str(cache_dir))
    assert report["stages"][0]["selection"]["kept"] == 64
    tree.pop("teacher")
    tree["teacher"] = {"model": str(tiny_teacher)}
    with pytest.raises(RecipeError, match="two or more teachers"):
        run(tree, tmp_path / "one", cache_dir=str(cache_dir))


def test_teachers_with_other_labels_fail_before_training(
    tiny_teacher, sst2_slice, tmp_path, cache_dir, tokenizer
):
    from slimformer.api import run
    from tests.conftest import sst2_recipe

    swapped = _second_teacher(
        tmp_path,
        tokenizer,
        id2label={0: "positive", 1: "negative"},
        label2id={"positive": 0, "negative": 1},
    )
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["teacher"]["also"] = [{"model": str(swapped)}]
    with pytest.raises(RecipeError, match="same label set"):
        run(tree, tmp_path / "bad", cache_dir=str(cache_dir))


def test_curriculum_batches_group_similar_lengths():
    rng = np.random.default_rng(0)
    confidence = rng.random(640)
    lengths = rng.integers(5, 60, 640)
    batches = curriculum_order(confidence, 20, 32, "root", 0.3, lengths=lengths)
    padding = sum(32 * lengths[b].max() - lengths[b].sum() for b in map(np.array, batches))
    plain = curriculum_order(confidence, 20, 32, "root", 0.3)
    padding_plain = sum(32 * lengths[b].max() - lengths[b].sum() for b in map(np.array, plain))
    assert padding < 0.5 * padding_plain
    ranking = easy_to_hard(confidence)
    assert set(batches[0]) <= set(ranking[: int(0.3 * 640) + 1].tolist())  # still easy first


def test_length_bins_keep_the_pools_length_mix():
    """Short rows score highest here (as ambiguous fragments do with a real teacher): the plain
    top fraction takes only short rows, the length-binned one the same share of every bin,
    the least certain rows within each."""
    lengths = np.repeat([3, 10, 30, 60], 25)
    scores = 1.0 / lengths + np.tile(np.linspace(0, 1e-3, 25), 4)
    plain = select(scores, 0.2)
    assert set(lengths[plain]) == {3}
    bins = length_bins(lengths, 4)
    assert sorted(np.unique(bins).tolist()) == [0, 1, 2, 3]
    binned = select(scores, 0.2, strata=bins)
    assert np.bincount(bins[binned]).tolist() == [5, 5, 5, 5]
    assert all(i % 25 >= 20 for i in binned)  # within a bin: the highest scores
    assert length_bins(lengths, 1).tolist() == [0] * 100
    predicted = np.arange(100) % 2
    both = select(scores, 0.2, predicted, class_balanced=True, strata=bins)
    assert len(both) == 20 and (predicted[both] == 1).sum() == 10
