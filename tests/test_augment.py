"""Augmentation for KD: each operation by hand, determinism under a seed, embedding neighbours
and the masked-LM path on a tiny model."""

import pytest
import torch

from slimformer.methods.augment.augment import augment_texts
from slimformer.methods.augment.config import AugmentConfig
from slimformer.methods.augment.neighbours import EmbeddingNeighbours

TEXTS = [
    "a good movie with a great cast",
    "the plot is dull and the acting is bad",
    "funny",
]


@pytest.fixture(scope="module")
def neighbours(tokenizer):
    torch.manual_seed(0)
    emb = torch.randn(len(tokenizer), 16)
    good, great = tokenizer.convert_tokens_to_ids(["good", "great"])
    emb[great] = emb[good] + 0.01  # great is good's nearest neighbour
    return EmbeddingNeighbours(tokenizer, emb, k=3)


def test_embedding_neighbours_are_whole_words(neighbours):
    cands = neighbours.candidates("good")
    assert cands[0] == "great" and len(cands) == 3
    assert all(c.isalpha() and c != "good" for c in cands)
    assert neighbours.candidates("antidisestablishmentarianism") == []  # several pieces


def test_augmentation_is_deterministic_under_a_seed(neighbours):
    cfg = AugmentConfig(copies=3, replace=0.5, mask=0.1, delete=0.1, ngram=0.2, seed=7)
    first = augment_texts(TEXTS, cfg, "[MASK]", neighbours)
    again = augment_texts(TEXTS, cfg, "[MASK]", neighbours)
    other = augment_texts(TEXTS, cfg.model_copy(update={"seed": 8}), "[MASK]", neighbours)
    assert first == again and first != other
    assert [i for i, _ in first] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_each_operation(neighbours):
    masked = augment_texts(TEXTS, AugmentConfig(replace=0, mask=1.0), "[MASK]")
    assert masked[0][1] == " ".join(["[MASK]"] * 7)
    deleted = augment_texts(TEXTS, AugmentConfig(replace=0, delete=1.0), "[MASK]")
    assert all(len(t.split()) == 1 and t in TEXTS[i].split() for i, t in deleted)
    cut = augment_texts(TEXTS * 5, AugmentConfig(replace=0, ngram=1.0, copies=2), "[MASK]")
    for i, text in cut:
        source = (TEXTS * 5)[i]
        assert len(text.split()) <= 5 and f" {text} " in f" {source} "
    replaced = augment_texts(["good good good"], AugmentConfig(replace=1.0), "[MASK]", neighbours)
    assert all(w in neighbours.candidates("good") for w in replaced[0][1].split())


def test_masked_lm_replacements(tmp_path, tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    from slimformer.methods.augment.mlm import MaskedLMCandidates

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    mlm = MaskedLMCandidates(str(tmp_path / "mlm"), k=4)
    cfg = AugmentConfig(copies=2, replace=0.5, seed=1)
    first = augment_texts(TEXTS, cfg, "[MASK]", mlm=mlm)
    assert first == augment_texts(TEXTS, cfg, "[MASK]", mlm=mlm)
    changed = sum(t != TEXTS[i] for i, t in first)
    assert changed >= 3
    assert all("[MASK]" not in t for _, t in first)


def test_augment_needs_an_operation():
    with pytest.raises(ValueError, match="at least one"):
        AugmentConfig(replace=0)
