"""Student derivation: which layers, copied weights, width changes, depth errors."""

import pytest
import torch
from transformers import BertForSequenceClassification

from slimformer.errors import ModelError, RecipeError
from slimformer.models.student import (
    StudentConfig,
    copy_layers,
    derive_student,
    evenly_spaced_layers,
)


@pytest.mark.parametrize(
    "teacher,student,expected",
    [
        (6, 3, [0, 3, 5]),
        (12, 6, [0, 2, 4, 7, 9, 11]),
        (6, 1, [5]),
        (4, 4, [0, 1, 2, 3]),
        (12, 4, [0, 4, 7, 11]),
        (30, 2, [0, 29]),
    ],
)
def test_evenly_spaced_layers(teacher, student, expected):
    assert evenly_spaced_layers(teacher, student) == expected


def test_more_student_layers_than_teacher_is_a_clear_error():
    with pytest.raises(ModelError, match="only 6"):
        evenly_spaced_layers(6, 8)


def test_copy_layers_copies_weights_and_reindexes(tiny_teacher):
    teacher = BertForSequenceClassification.from_pretrained(tiny_teacher)
    student = copy_layers(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2
    assert len(student.bert.encoder.layer) == 2
    for s_i, t_i in ((0, 1), (1, 3)):
        s_w = student.bert.encoder.layer[s_i].attention.self.query.weight
        t_w = teacher.bert.encoder.layer[t_i].attention.self.query.weight
        assert torch.equal(s_w, t_w)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight,
        teacher.bert.embeddings.word_embeddings.weight,
    )


def test_copying_every_layer_reproduces_the_teacher(tiny_teacher):
    teacher = BertForSequenceClassification.from_pretrained(tiny_teacher).eval()
    student = copy_layers(teacher, [0, 1, 2, 3]).eval()
    ids = torch.randint(5, 1000, (2, 7))
    assert torch.allclose(teacher(input_ids=ids).logits, student(input_ids=ids).logits)


def test_narrower_random_student(tiny_teacher):
    teacher = BertForSequenceClassification.from_pretrained(tiny_teacher)
    student, info = derive_student(
        teacher, StudentConfig(layers=2, hidden_size=16, num_heads=2, intermediate_size=32)
    )
    assert info["init"] == "random"
    assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 2
    assert student.bert.encoder.layer[0].intermediate.dense.weight.shape == (32, 16)


def test_explicit_layer_list_out_of_range(tiny_teacher):
    teacher = BertForSequenceClassification.from_pretrained(tiny_teacher)
    with pytest.raises(RecipeError, match="0..3"):
        derive_student(teacher, StudentConfig(layers=[0, 7]))


def test_hidden_not_divisible_by_heads_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        StudentConfig(hidden_size=30, num_heads=4)
