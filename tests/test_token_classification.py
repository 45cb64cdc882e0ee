"""Token classification (NER): CoNLL reading, sub-token alignment, token-level KD loss with
masked positions, entity metrics, and distill / finetune end to end on tiny models."""

from pathlib import Path

import numpy as np
import pytest
import torch

from slimformer.data.conll import read_conll
from slimformer.errors import DataError
from tests.conftest import CONLL, SHARED, TAGS  # noqa: F401


def test_conll_reader_skips_docstart_and_handles_blank_lines(tmp_path):
    text = (
        "-DOCSTART- -X- O O\n\n\nEU NNP I-NP B-ORG\nrejects VBZ I-VP O\n\n\n\n"
        "Peter NNP I-NP B-PER\n"
    )
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    ds = read_conll(tmp_path / "a.txt")
    assert ds["tokens"] == [["EU", "rejects"], ["Peter"]]
    assert ds["tags"] == [["B-ORG", "O"], ["B-PER"]]
    assert read_conll(tmp_path / "a.txt", tag_column=1)["tags"][0] == ["NNP", "VBZ"]


def test_conll_reader_names_a_line_with_the_wrong_column_count(tmp_path):
    (tmp_path / "b.txt").write_text("EU NNP I-NP B-ORG\nrejects VBZ O\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2 has 3 columns"):
        read_conll(tmp_path / "b.txt")


def test_real_conll_counts():
    assert len(read_conll(CONLL / "valid.txt")) == 3250


def _task(tokenizer, subtokens="first", max_length=32):
    from slimformer.data.config import DataConfig
    from slimformer.pipeline.context import _LabelConfig
    from slimformer.tasks import get_task

    task = get_task("token-classification")
    data = DataConfig(
        train="x",
        text_column="tokens",
        label_column="tags",
        subtokens=subtokens,
        max_length=max_length,
    )
    return task, data, _LabelConfig(TAGS)


def test_subtoken_alignment_on_tricky_words(tokenizer):
    import datasets

    task, data, config = _task(tokenizer)
    words = ["Schwarzenegger", "visited", "São", "Paulo", "(", "U.S.", ")"]
    tags = ["B-PER", "O", "B-LOC", "I-LOC", "O", "B-LOC", "O"]
    ds = datasets.Dataset.from_dict({"tokens": [words], "tags": [tags]})
    row = task.prepare(ds, tokenizer, data, config, "train")[0]
    pieces = tokenizer.convert_ids_to_tokens(row["input_ids"])
    starts = [p for p, s in zip(pieces, row["word_start"], strict=True) if s]
    assert len(starts) == len(words)  # exactly one start per word
    labeled = [TAGS[t] for t in row["labels"] if t >= 0]
    assert labeled == tags  # first sub-tokens carry the word's tag, in order
    assert row["labels"][0] == -100 and row["labels"][-1] == -100  # [CLS], [SEP]
    assert row["kd_mask"] == row["word_start"]
    task_all, data_all, _ = _task(tokenizer, subtokens="all")
    every = task_all.prepare(ds, tokenizer, data_all, config, "train")[0]
    assert sum(every["kd_mask"]) == len(pieces) - 2  # every real sub-token, no specials
    assert every["word_start"] == row["word_start"]


def test_unknown_tag_is_refused(tokenizer):
    import datasets

    task, data, config = _task(tokenizer)
    ds = datasets.Dataset.from_dict({"tokens": [["x"]], "tags": [["B-FOOD"]]})
    with pytest.raises(DataError, match="B-FOOD"):
        task.prepare(ds, tokenizer, data, config, "train")


def test_token_kd_loss_by_hand_with_masked_positions(tokenizer):
    """KL at T over tag distributions, averaged over the positions the task's mask keeps."""
    from slimformer.methods.distill.losses import SOFT_LOSSES

    task, _, _ = _task(tokenizer)
    task.width, task.id2label = 4, dict(enumerate(["O", "B-X"]))
    student = torch.zeros(1, 3, 2)  # uniform
    teacher_logits = torch.tensor([[[0.0, 0.0], [np.log(3.0), 0.0], [9.0, -9.0]]])
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "kd_mask": torch.tensor([[0, 1, 0]])}

    class Model:
        def __call__(self, **kw):
            return type("Out", (), {"logits": student})

    out = task.forward(Model(), batch)
    assert out.mask.tolist() == [False, True, False]
    kl = SOFT_LOSSES.get("kl")(out.values, teacher_logits.reshape(-1, 2), out.mask, 1.0)
    # only position 1 counts: KL((3/4, 1/4) || (1/2, 1/2))
    expected = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    assert kl.item() == pytest.approx(expected, rel=1e-5)
    packed = task.pack(teacher_logits.reshape(-1, 2), batch)
    assert packed.shape == (1, 8)
    assert torch.equal(task.unpack(packed, batch), teacher_logits.reshape(-1, 2))


def test_entity_metrics_by_hand():
    from slimformer.tasks.metrics import entity_metrics

    id2label = dict(enumerate(TAGS))
    gold = np.array([[1, 2, 0, 5, -100], [3, 0, -100, -100, -100]])  # PER(2), LOC; ORG
    pred = np.array([[1, 2, 0, 0, 7], [3, 0, 0, 0, 0]])  # PER right, LOC missed; ORG right
    m = entity_metrics(pred, gold, id2label)
    assert m["precision"] == pytest.approx(1.0) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.8) and m["f1_LOC"] == 0.0 and m["f1_PER"] == 1.0
    # an entity starting with I- counts in the default mode, not in strict IOB2
    loose = entity_metrics(np.array([[2, 2]]), np.array([[1, 2]]), id2label)
    strict = entity_metrics(np.array([[2, 2]]), np.array([[1, 2]]), id2label, strict=True)
    assert loose["f1"] == 1.0 and strict["f1"] == 0.0


def _ner_recipe(teacher: Path, data: dict[str, Path], **stage) -> dict:
    distill = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "save_every": 50}
    distill.update(stage)
    return {
        "task": "token-classification",
        "teacher": {"model": str(teacher)},
        "student": {"layers": 2},
        "data": {
            "train": str(data["train"]),
            "eval": str(data["dev"]),
            "text_column": "tokens",
            "label_column": "tags",
            "max_length": 64,
        },
        "stages": [{"distill": distill}],
        "report": {"repeats": 2, "batch_sizes": [1, 4], "seq_len": 16},
    }


def test_token_distillation_end_to_end_with_cache(
    tiny_ner_teacher, conll_slice, tmp_path, cache_dir
):
    from transformers import AutoModelForTokenClassification, pipeline

    from slimformer.api import run

    tree = _ner_recipe(tiny_ner_teacher, conll_slice, alpha=0.5, temperature=2.0)
    first = run(tree, tmp_path / "a", cache_dir=str(cache_dir))
    stage = first["stages"][0]
    assert stage["teacher_forward_examples"] == len(read_conll(conll_slice["train"]))
    assert {"f1", "precision", "recall", "token_accuracy"} <= set(first["student"]["metrics"])
    assert "teacher_agreement" in first["student"]["metrics"]
    second = run(tree, tmp_path / "b", cache_dir=str(cache_dir))
    assert second["stages"][0]["teacher_forward_examples"] == 0  # per-token logits cached
    assert second["student"]["metrics"] == first["student"]["metrics"]
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "a" / "model")
    assert model.config.id2label[1] == "B-PER"
    ner = pipeline("token-classification", model=str(tmp_path / "a" / "model"))
    assert isinstance(ner("Peter Blackburn visited Brussels"), list)


def test_finetune_token_teacher_from_backbone(conll_slice, tmp_path, cache_dir, tiny_ner_teacher):
    from slimformer.api import run

    tree = _ner_recipe(tiny_ner_teacher, conll_slice)
    tree.pop("teacher")
    tree["student"] = {"model": str(tiny_ner_teacher)}
    tree["stages"] = [{"finetune": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3}}]
    report = run(tree, tmp_path / "ft", cache_dir=str(cache_dir))
    assert report["stages"][0]["best"]["f1"] >= 0.0


def _valid_iob2(tags: list[str]) -> bool:
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


def test_crf_decode_never_emits_an_invalid_iob2_transition():
    from slimformer.models.crf import IOB2CRF

    torch.manual_seed(0)
    crf = IOB2CRF(TAGS)
    with torch.no_grad():
        crf.transitions.normal_(0, 3)  # even with learned transitions pushing the wrong way
    emissions = torch.randn(64, 12, len(TAGS)) * 5
    emissions[:, :, 2] += 8  # I-PER everywhere is the argmax: invalid after O / at the start
    mask = torch.ones(64, 12, dtype=torch.bool)
    mask[0, 5:] = False
    paths = crf.decode(emissions, mask)
    assert len(paths[0]) == 5 and all(len(p) == 12 for p in paths[1:])
    assert all(_valid_iob2([TAGS[t] for t in p]) for p in paths)
    assert not all(_valid_iob2([TAGS[t] for t in row]) for row in emissions.argmax(-1).tolist())


def _random_crf(seed: int):
    from slimformer.models.crf import IOB2CRF

    torch.manual_seed(seed)
    crf = IOB2CRF(["O", "B-X", "I-X"])
    with torch.no_grad():
        for p in (crf.transitions, crf.start, crf.end):
            p.normal_()
    return crf


def _sequence_score(crf, emissions: torch.Tensor, seq: tuple[int, ...]) -> torch.Tensor:
    """The CRF's score of one tag sequence, written out: (L, C) emissions of one sentence."""
    trans = crf.transitions + crf.penalty
    s = crf.start[seq[0]] + crf.start_penalty[seq[0]] + emissions[0, seq[0]]
    for i in range(1, len(seq)):
        s = s + trans[seq[i - 1], seq[i]] + emissions[i, seq[i]]
    return s + crf.end[seq[-1]]


def test_crf_likelihood_against_brute_force():
    import itertools

    crf = _random_crf(1)
    emissions = torch.randn(1, 3, 3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    seqs = list(itertools.product(range(3), repeat=3))
    scores = torch.stack([_sequence_score(crf, emissions[0], s) for s in seqs])
    gold = (1, 2, 0)  # B-X I-X O
    expected = _sequence_score(crf, emissions[0], gold) - torch.logsumexp(scores, 0)
    got = crf.log_likelihood(emissions, torch.tensor([gold]), mask)
    assert got.item() == pytest.approx(expected.item(), abs=1e-4)
    assert crf.decode(emissions, mask)[0] == list(seqs[int(scores.argmax())])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_crf_marginals_against_brute_force(temperature):
    """Per-word marginals = sums of exp(score / T) over every tag sequence, for two sentences of
    different lengths in one padded batch; forbidden IOB2 transitions get probability 0."""
    import itertools

    crf = _random_crf(2)
    emissions = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    got = crf.log_marginals(emissions, mask, temperature).exp()
    for row, length in enumerate((4, 3)):
        seqs = list(itertools.product(range(3), repeat=length))
        scores = torch.stack([_sequence_score(crf, emissions[row], s) for s in seqs])
        probs = (scores / temperature).softmax(0)
        for i in range(length):
            expected = torch.zeros(3)
            for p, seq in zip(probs, seqs, strict=True):
                expected[seq[i]] += p
            assert torch.allclose(got[row, i], expected, atol=1e-5)
    assert got[:, 0, 2].max() < 1e-6  # I-X never starts a sentence


def test_posterior_values_put_crf_marginals_at_word_starts():
    """What the soft loss reads: log_softmax(values / T) is the CRF's marginal at each word
    start (its sub-tokens and padding keep the emission scores)."""
    from types import SimpleNamespace

    from slimformer.models.crf import IOB2CRF
    from slimformer.tasks.base import Aligned
    from slimformer.tasks.token_classification import TokenClassification, words

    torch.manual_seed(3)
    model = SimpleNamespace(crf=IOB2CRF(["O", "B-X", "I-X"]))
    word_start = torch.tensor([[0, 1, 1, 0, 1, 0], [0, 1, 0, 1, 0, 0]])
    batch = {"input_ids": torch.zeros(2, 6, dtype=torch.long), "word_start": word_start}
    values = torch.randn(12, 3)
    out = Aligned(values, word_start.reshape(-1).bool())
    got = TokenClassification().posterior_values(model, out, batch, 2.0).reshape(2, 6, 3)
    emissions, mask = words(values.reshape(2, 6, 3), word_start)
    expected = model.crf.log_marginals(emissions, mask, 2.0).clamp(min=-30)
    starts = word_start.bool()
    assert torch.allclose((got[starts] / 2.0).log_softmax(-1), expected[mask], atol=1e-5)
    assert torch.equal(got[~starts], values.reshape(2, 6, 3)[~starts])


def test_crf_marginals_without_a_crf_is_refused():
    from slimformer.errors import RecipeError
    from slimformer.pipeline.recipe import parse_recipe

    tree = {
        "task": "token-classification",
        "teacher": {"model": "t"},
        "student": {"layers": 1},
        "data": {"train": "train.txt"},
        "stages": [{"distill": {"crf_kd": "marginals"}}],
    }
    with pytest.raises(RecipeError, match="crf: true"):
        parse_recipe(tree)


@pytest.mark.parametrize("crf_kd", ["emissions", "marginals"])
def test_crf_student_end_to_end(tiny_ner_teacher, conll_slice, tmp_path, cache_dir, crf_kd):
    from transformers import AutoModelForTokenClassification

    from slimformer.api import run
    from slimformer.models.crf import has_crf
    from slimformer.tasks import get_task

    tree = _ner_recipe(tiny_ner_teacher, conll_slice, alpha=0.5, crf_kd=crf_kd)
    tree["student"]["crf"] = True
    report = run(tree, tmp_path / "crf", cache_dir=str(cache_dir))
    assert report["student"]["metrics"]["f1"] >= 0.0
    folder = str(tmp_path / "crf" / "model")
    model = get_task("token-classification").load_model(folder)
    assert has_crf(model) and model.crf.transitions.abs().sum() > 0  # trained and restored
    plain = AutoModelForTokenClassification.from_pretrained(folder)  # ignores the CRF
    assert not has_crf(plain)


def test_token_student_with_layerwise_terms_then_onnx_int8(
    tiny_ner_teacher, conll_slice, tmp_path, cache_dir
):
    """Token KD works with the layer-wise terms, and the student exports to ONNX (parity per
    token) and quantizes to INT8."""
    from slimformer.api import run

    tree = _ner_recipe(
        tiny_ner_teacher,
        conll_slice,
        alpha=0.5,
        intermediate={"terms": {"hidden_mse": 1.0, "attention_kl": 1.0}},
    )
    tree["stages"] += [{"export": {}}, {"quantize": {"method": "dynamic"}}]
    report = run(tree, tmp_path / "onnx", cache_dir=str(cache_dir))
    distill, export, quantize = report["stages"]
    assert distill["intermediate"]["layer_mapping"]["student_2"] == "teacher_4"
    assert export["parity"]["max_abs_diff"] < 1e-3 and export["parity"]["agreement"] >= 0.999
    assert "f1" in quantize["int8_metrics"]
    assert (tmp_path / "onnx" / "model" / "model.onnx").is_file()


def test_unlabeled_text_is_cut_into_sentences_and_left_untagged(tokenizer, tmp_path):
    from slimformer.data.config import UnlabeledConfig
    from slimformer.tasks.token_classification import sentences

    assert sentences("Peter came . Did he ? yes") == [
        ["Peter", "came", "."],
        ["Did", "he", "?"],
        ["yes"],
    ]
    text = tmp_path / "news.txt"
    text.write_text("EU rejects German call . Peter Blackburn\n\nBrussels 1996-08-22\n")
    task, data, config = _task(tokenizer)
    data.unlabeled = UnlabeledConfig(source=str(text))
    raw = task.raw_unlabeled(data, seed=0)
    assert raw["tokens"] == [
        ["EU", "rejects", "German", "call", "."],
        ["Peter", "Blackburn"],
        ["Brussels", "1996-08-22"],
    ]
    rows = task.prepare_unlabeled(raw, tokenizer, data, config)
    for row, words in zip(rows, raw["tokens"], strict=True):
        assert set(row["labels"]) == {-100}  # no gold tag: the teacher's soft labels only
        assert sum(row["word_start"]) == len(words)
        assert row["kd_mask"] == row["word_start"]  # KD on every word's first sub-token
    strings = task.prepare_unlabeled(  # augmented copies arrive as space-joined strings
        datasets_from({"tokens": ["EU rejects German call ."]}), tokenizer, data, config
    )
    assert strings[0]["input_ids"] == rows[0]["input_ids"]


def datasets_from(columns: dict):
    import datasets

    return datasets.Dataset.from_dict(columns)


def test_unlabeled_with_an_empty_file_is_refused(tokenizer, tmp_path):
    from slimformer.data.config import UnlabeledConfig

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    task, data, _ = _task(tokenizer)
    data.unlabeled = UnlabeledConfig(source=str(empty))
    with pytest.raises(DataError, match="no non-blank lines"):
        task.raw_unlabeled(data, seed=0)


def test_crf_hard_loss_skips_untagged_rows():
    from types import SimpleNamespace

    from slimformer.models.crf import attach_crf
    from slimformer.tasks.base import Aligned
    from slimformer.tasks.token_classification import TokenClassification

    model = torch.nn.Module()
    model.config = SimpleNamespace(id2label=dict(enumerate(TAGS)), num_labels=len(TAGS))
    attach_crf(model)
    torch.manual_seed(0)
    emissions = torch.randn(2, 4, len(TAGS), requires_grad=True)
    starts = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 0]])
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, -100, -100]])
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": labels}
    batch["word_start"] = starts
    out = Aligned(emissions.reshape(8, -1), starts.reshape(-1).bool())
    both = TokenClassification().hard_loss(model, out, batch, None)
    alone = TokenClassification().hard_loss(
        model,
        Aligned(emissions[:1].reshape(4, -1), starts[:1].reshape(-1).bool()),
        {k: v[:1] for k, v in batch.items()},
        None,
    )
    assert torch.allclose(both, alone)  # the untagged row adds nothing, not even to the mean
    both.backward()
    assert emissions.grad[1].abs().sum() == 0


def test_token_student_on_teacher_labeled_and_augmented_text(
    tiny_ner_teacher, conll_slice, tmp_path, cache_dir
):
    from slimformer.api import run

    text = tmp_path / "news.txt"
    text.write_text("EU rejects German call to boycott British lamb . Peter Blackburn\n" * 5)
    augment = {"copies": 1, "replace": 0.3, "max_examples": 20}  # TinyBERT DA on word lists
    tree = _ner_recipe(tiny_ner_teacher, conll_slice, alpha=0.5, temperature=2.0, augment=augment)
    tree["data"]["unlabeled"] = {"source": str(text)}
    tree["student"]["crf"] = True
    report = run(tree, tmp_path / "dd", cache_dir=str(cache_dir))
    stage = report["stages"][0]
    tagged = len(read_conll(conll_slice["train"]))
    assert stage["unlabeled_examples"] == 10 + 20 and stage["labeled_examples"] == tagged
    assert stage["teacher_forward_examples"] == tagged + 30
    assert not any(c in stage["augment"]["examples"][0] for c in "[]'")  # words, not a list repr


def test_train_rest_is_the_untagged_remainder_and_needs_its_settings(tokenizer, conll_slice):
    from slimformer.data.config import UnlabeledConfig

    task, data, _ = _task(tokenizer)
    data.train, data.eval = str(conll_slice["train"]), str(conll_slice["dev"])
    data.unlabeled = UnlabeledConfig(source="train-rest")
    with pytest.raises(DataError, match="max_train_examples"):
        task.raw_unlabeled(data, seed=0)
    data.max_train_examples = 40
    labeled, _ = task.raw_splits(data, seed=0)
    rest = task.raw_unlabeled(data, seed=0)
    everything = read_conll(conll_slice["train"])
    assert len(labeled) + len(rest) == len(everything) and rest.column_names == ["tokens"]
    seen = {tuple(t) for t in labeled["tokens"]}
    assert not any(tuple(t) in seen for t in rest["tokens"] if len(t) > 3)  # disjoint shares
