"""Structured pruning removes real structure: shapes shrink, removing units that contribute
nothing leaves the outputs unchanged, the folder reloads to identical logits and exports to
ONNX; magnitude masks hit their target; bad requests get clear errors."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from slimformer.errors import ModelError, RecipeError
from slimformer.methods.prune.importance import gradient_importance, magnitude_importance
from slimformer.methods.prune.magnitude import (
    cubic_sparsity,
    magnitude_masks,
    prunable_weights,
    sparsity_of,
)
from slimformer.methods.prune.plan import keep_count, keep_top, layers_to_drop
from slimformer.models.prune import (
    PLAN_ATTR,
    current_plan,
    drop_layers,
    load_pretrained,
    prune_ffn,
    prune_heads,
)
from tests.conftest import sst2_recipe, tiny_config


def tiny(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config()).eval()


def inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, feed=None):
    with torch.no_grad():
        return model(**(feed or inputs())).logits


def test_removing_silent_heads_and_neurons_changes_nothing():
    model = tiny()
    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    block = model.bert.encoder.layer[1]
    with torch.no_grad():  # head 2 and FFN neurons 0..9 of layer 1 contribute nothing
        block.attention.output.dense.weight[:, 2 * d : 3 * d] = 0
        block.output.dense.weight[:, :10] = 0
    before = logits(model)
    heads = [h for h in range(cfg.num_attention_heads) if h != 2]
    prune_heads(model, {1: heads})
    prune_ffn(model, {1: list(range(10, cfg.intermediate_size))})
    assert block.attention.self.query.out_features == (cfg.num_attention_heads - 1) * d
    assert block.attention.output.dense.in_features == (cfg.num_attention_heads - 1) * d
    assert block.intermediate.dense.out_features == cfg.intermediate_size - 10
    assert block.output.dense.in_features == cfg.intermediate_size - 10
    assert torch.allclose(logits(model), before, atol=1e-5)
    plan = current_plan(model)
    assert plan["attention_heads"][1] == cfg.num_attention_heads - 1
    assert getattr(model.config, PLAN_ATTR) == plan


def test_pruned_folder_reloads_identically_and_exports(tmp_path, tokenizer):
    from slimformer.eval.variants import onnx_variant  # noqa: F401  (ONNX runtime present)
    from slimformer.export.onnx_export import export_onnx
    from slimformer.export.ort_runtime import feed_for, ort_session

    model = tiny()
    prune_heads(model, {0: [0, 1], 2: [3]})
    prune_ffn(model, {i: list(range(0, 64, 2)) for i in range(4)})
    model.save_pretrained(tmp_path / "m")
    again = load_pretrained(AutoModelForSequenceClassification, str(tmp_path / "m"))
    assert torch.equal(logits(again), logits(model))
    with pytest.raises(Exception):  # noqa: B017  transformers alone cannot express pruned heads
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    export_onnx(model, tokenizer, tmp_path / "onnx")
    session = ort_session(tmp_path / "onnx" / "model.onnx")
    out = session.run(["logits"], feed_for(session, inputs()))[0]
    assert abs(out - logits(model).numpy()).max() < 1e-4


def test_uniform_ffn_pruning_loads_in_plain_transformers(tmp_path):
    model = tiny()
    prune_ffn(model, {i: list(range(32)) for i in range(4)})
    assert model.config.intermediate_size == 32 and not hasattr(model.config, PLAN_ATTR)
    model.save_pretrained(tmp_path / "m")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert torch.allclose(logits(plain), logits(model))


def test_drop_layers_reindexes():
    model = tiny()
    prune_heads(model, {3: [0]})
    slim = drop_layers(model, [1, 2])
    assert slim.config.num_hidden_layers == 2 and len(slim.bert.encoder.layer) == 2
    assert current_plan(slim)["attention_heads"] == [model.config.num_attention_heads, 1]
    assert torch.equal(
        slim.bert.encoder.layer[1].attention.self.query.weight,
        model.bert.encoder.layer[3].attention.self.query.weight,
    )
    with pytest.raises(ModelError, match="at least one layer"):
        drop_layers(model, [0, 1, 2, 3])


def test_importance_scores_have_unit_shapes():
    model = tiny()
    batch = inputs() | {"labels": torch.tensor([0, 1, 0])}

    def loss(m, b):
        return m(**b).loss

    heads, ffn = gradient_importance(model, [batch, batch], loss)
    assert [h.shape[0] for h in heads] == [model.config.num_attention_heads] * 4
    assert [f.shape[0] for f in ffn] == [model.config.intermediate_size] * 4
    assert all(torch.isclose(h.norm(), torch.tensor(1.0)) for h in heads)
    assert magnitude_importance(model)[0].shape[0] == model.config.intermediate_size


def test_keep_plan_and_clear_errors():
    assert keep_count(12, 0.5) == 6 and keep_count(1536, 0.5) == 768 and keep_count(4, 0.0) == 4
    scores = [torch.tensor([0.1, 0.9, 0.5, 0.2])]
    assert keep_top(scores, [4], 0.5, "heads") == {0: [1, 2]}
    with pytest.raises(RecipeError, match=r"\[0, 1\)"):
        keep_top(scores, [4], 1.0, "heads")
    assert keep_top(scores, [4], 0.9, "heads") == {0: [1]}  # at least one head always stays
    assert layers_to_drop([0.5, 0.01, 0.2, 0.03], 2) == [1, 3]
    with pytest.raises(RecipeError, match="every layer"):
        layers_to_drop([0.5, 0.01], 2)


def test_pruning_all_heads_of_a_layer_is_refused():
    with pytest.raises(ModelError, match="Keep at least one head"):
        prune_heads(tiny(), {0: []})


def test_unsupported_family_names_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(ModelError, match="Supported: bert, electra, roberta"):
        prune_heads(model, {0: [0]})


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_magnitude_masks_hit_the_target_sparsity(scope):
    weights = prunable_weights(tiny())
    masks = magnitude_masks(weights, 0.6, scope)
    zeroed = {n: w * masks[n] for n, w in weights.items()}
    assert sparsity_of(zeroed) == pytest.approx(0.6, abs=0.01)
    if scope == "per_layer":
        for w in zeroed.values():
            assert float((w == 0).float().mean()) == pytest.approx(0.6, abs=0.02)
    assert cubic_sparsity(0.8, 3, 3) == pytest.approx(0.8) and cubic_sparsity(0.8, 1, 3) > 0.8 / 3


def test_prune_recipe_end_to_end(tiny_teacher, sst2_slice, tmp_path, cache_dir):
    from slimformer.api import run

    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["student"] = {"model": str(tiny_teacher)}
    tree["stages"] = [
        {
            "prune": {
                "heads": 0.5,
                "ffn": 0.5,
                "layers": 1,
                "iterations": 2,
                "epochs": 1,
                "batch_size": 32,
                "importance_examples": 64,
            }
        },
        {"sparsify": {"sparsity": 0.5, "iterations": 1, "epochs": 1, "batch_size": 32}},
    ]
    report = run(tree, tmp_path / "run", cache_dir=str(cache_dir))
    prune, sparsify = report["stages"][0], report["stages"][1]
    assert prune["final_plan"]["attention_heads"] == [2, 2, 2]  # tiny: 4 heads -> 2, 4 -> 3 layers
    assert prune["final_plan"]["intermediate_sizes"] == [32, 32, 32]
    assert prune["params_after"] < prune["params_before"]  # (tiny: embeddings dominate)
    assert sparsify["sparsity"] == pytest.approx(0.5, abs=0.02)
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config[PLAN_ATTR]["attention_heads"] == [2, 2, 2]
    assert report["student"]["params"] < report["teacher"]["params"]


def test_layers_copied_from_a_pruned_teacher_keep_their_shapes(tmp_path):
    from slimformer.models.student import copy_layers

    teacher = tiny()
    prune_heads(teacher, {i: [0, 1] for i in range(4)})
    student = copy_layers(teacher, [0, 3])
    assert current_plan(student)["attention_heads"] == [2, 2]
    student.save_pretrained(tmp_path / "s")
    again = load_pretrained(AutoModelForSequenceClassification, str(tmp_path / "s"))
    assert torch.equal(logits(again), logits(student))
