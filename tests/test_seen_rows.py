"""embedding_rows: seen trains only the word-embedding rows of token ids in the training data,
and must end exactly where training the whole table ends."""

import datasets
import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, BertForMaskedLM

from slimformer.train.config import TrainConfig
from slimformer.train.loop import train
from slimformer.train.seen_rows import (
    SeenRowsEmbedding,
    seen_token_ids,
    stand_ins,
    tables_in_place,
    train_seen_rows,
)

from .conftest import pad_collate, tiny_config


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, vocab_size=200)
    return AutoModelForSequenceClassification.from_config(cfg)


def _rows() -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)
    ids = [[101, *torch.randint(5, 60, (int(n),), generator=g).tolist(), 102] for n in range(3, 19)]
    return datasets.Dataset.from_dict(
        {"input_ids": ids, "labels": [i % 2 for i in range(len(ids))]}
    )


def _loss(model, batch, progress):
    return model(**batch).loss, {}


def _trained(tmp_path, rows_mode: str) -> dict[str, torch.Tensor]:
    model = _tiny_model()
    cfg = TrainConfig(
        epochs=3, batch_size=4, learning_rate=5e-3, weight_decay=0.1, embedding_rows=rows_mode
    )
    result = train(model, _rows(), pad_collate, _loss, cfg, tmp_path / rows_mode, seed=0)
    assert not stand_ins(model)  # the model's own table is back after training
    saved = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    return saved.state_dict()


def test_training_the_seen_rows_ends_where_training_the_whole_table_ends(tmp_path, caplog):
    whole = _trained(tmp_path, "all")
    with caplog.at_level("INFO", logger="slimformer"):
        seen = _trained(tmp_path, "seen")
    # the distinct ids of the rows (50 of 5..59, [CLS], [SEP]) and [PAD], which the collator adds
    assert "embedding rows: 53 of 200 token ids" in caplog.text
    assert whole.keys() == seen.keys()  # a standard folder: no stand-in keys
    for name in whole:
        assert torch.allclose(whole[name], seen[name], atol=1e-6, rtol=1e-5), name
    table = "bert.embeddings.word_embeddings.weight"
    start = _tiny_model().state_dict()[table]
    unseen = 150  # never in the rows: only weight decay moved it, by the same factor in both
    assert not torch.equal(seen[table][unseen], start[unseen])
    assert torch.allclose(seen[table][unseen] / start[unseen], whole[table][unseen] / start[unseen])


def test_seen_ids_include_padding_and_skip_what_is_not_an_id():
    ids = seen_token_ids([[5, 7], [7, 9]], vocab_size=12, extra=(0, None, 40, -1))
    assert ids.tolist() == [0, 5, 7, 9]


def test_tied_frozen_or_custom_tables_and_mostly_seen_vocabularies_are_left_alone():
    tied = BertForMaskedLM(tiny_config(vocab_size=50))
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    train_seen_rows(tied, [[1, 2]], "auto")
    assert not stand_ins(tied)
    frozen = _tiny_model()
    frozen.get_input_embeddings().weight.requires_grad_(False)
    train_seen_rows(frozen, [[1, 2]], "seen")
    assert not stand_ins(frozen)
    patched = _tiny_model()  # QAT fake-quantizes a table by patching its forward
    patched.get_input_embeddings().forward = lambda ids: None
    train_seen_rows(patched, [[1, 2]], "seen")
    assert not stand_ins(patched)

    class Scaled(nn.Embedding):  # e.g. a model that scales its lookups
        def forward(self, ids):
            return super().forward(ids) * 2.0

    scaled = _tiny_model()
    scaled.set_input_embeddings(Scaled(200, 32))
    train_seen_rows(scaled, [[1, 2]], "seen")
    assert not stand_ins(scaled)
    model = _tiny_model()
    train_seen_rows(model, [list(range(190))], "auto")  # 95% of 200 rows seen
    assert not stand_ins(model)
    restore = train_seen_rows(model, [list(range(190))], "seen")
    assert len(stand_ins(model)) == 1
    restore()
    assert isinstance(model.get_input_embeddings(), nn.Embedding)
    assert model.get_input_embeddings().weight.requires_grad


def test_an_id_outside_the_training_data_is_refused_in_training_and_served_in_eval():
    model = _tiny_model()
    train_seen_rows(model, [[101, 7, 102]], "seen")
    stand_in = model.get_input_embeddings()
    assert isinstance(stand_in, SeenRowsEmbedding)
    with pytest.raises(RuntimeError, match="embedding_rows: all"):
        model.train()(input_ids=torch.tensor([[101, 8, 102]]))
    with torch.no_grad():
        stand_in.rows.add_(1.0)
    stand_in.decay_unseen(0.5)
    before = stand_in.table.weight[8].clone()
    model.eval()(input_ids=torch.tensor([[101, 8, 102]]))  # eval: the whole table, written back
    assert torch.allclose(stand_in.table.weight[8], before * 0.5)
    assert torch.allclose(stand_in.table.weight[7], stand_in.rows[1])
    with tables_in_place(model):
        assert model.get_input_embeddings() is stand_in.table
    assert model.get_input_embeddings() is stand_in
