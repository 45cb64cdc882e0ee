"""Layer-wise KD: loss terms by hand, layer mapping, projections, head rules, augmentation,
and the two-stage / progressive recipes end to end on tiny models."""

import math

import pytest
import torch

from slimformer.errors import RecipeError
from slimformer.methods.distill.layerwise.mapping import layer_mapping
from slimformer.methods.distill.losses import LAYER_LOSSES


def _term(name: str):
    return LAYER_LOSSES.get(name).fn


def test_hidden_and_embedding_mse_by_hand():
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # (1, 3, 2); third token is padding
    t = torch.tensor([[[0.0, 2.0], [3.0, 2.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # token 1: ((1)^2 + 0) / 2 = 0.5; token 2: (0 + 2^2) / 2 = 2; mean over real tokens 1.25
    assert _term("hidden_mse")(s, t, mask).item() == pytest.approx(1.25)
    assert _term("embedding_mse")(s, t, mask).item() == pytest.approx(1.25)
    assert LAYER_LOSSES.get("embedding_mse").needs == "embeddings"


def test_hidden_cosine_by_hand():
    s = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    t = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    # orthogonal -> 1, parallel -> 0
    assert _term("hidden_cosine")(s, t, torch.ones(1, 2)).item() == pytest.approx(0.5)


def test_attention_mse_by_hand_excludes_padding_pairs():
    s = torch.zeros(1, 1, 2, 2)
    t = torch.tensor([[[[1.0, 100.0], [100.0, 100.0]]]])
    # only the (0, 0) pair is real: (0 - 1)^2 = 1
    assert _term("attention_mse")(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(1.0)
    assert _term("attention_mse")(s, t, torch.ones(1, 2)).item() == pytest.approx(
        (1 + 3 * 100**2) / 4
    )


def test_attention_kl_by_hand():
    s = torch.zeros(1, 1, 2, 2)  # uniform over the two keys
    t = torch.tensor([[[[0.0, math.log(3.0)], [0.0, 0.0]]]])  # row 0: (1/4, 3/4); row 1 uniform
    row0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert _term("attention_kl")(s, t, torch.ones(1, 2)).item() == pytest.approx(row0 / 2)
    # a padded key is left out of both softmaxes: one key left -> identical distributions
    assert _term("attention_kl")(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("s", "t", "expected"),
    [
        (3, 6, {1: 2, 2: 4, 3: 6}),
        (4, 12, {1: 3, 2: 6, 3: 9, 4: 12}),
        (4, 6, {1: 2, 2: 3, 3: 5, 4: 6}),
        (2, 2, {1: 1, 2: 2}),
        (6, 3, {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}),
        (1, 6, {1: 6}),
    ],
)
def test_uniform_mapping_defaults(s, t, expected):
    assert layer_mapping(s, t, "uniform") == expected


def test_last_and_explicit_mapping():
    assert layer_mapping(3, 6, "last") == {1: 4, 2: 5, 3: 6}
    assert layer_mapping(3, 6, [1, 3, 6]) == {1: 1, 2: 3, 3: 6}


@pytest.mark.parametrize(
    ("rule", "match"),
    [([1, 2, 7], "out of range"), ([1, 2], "one teacher layer"), ([0, 1, 2], "out of range")],
)
def test_impossible_mapping_is_refused(rule, match):
    with pytest.raises(RecipeError, match=match):
        layer_mapping(3, 6, rule)
    with pytest.raises(RecipeError, match="no deeper"):
        layer_mapping(8, 6, "last")


def _tiny(**kw):
    from transformers import BertForSequenceClassification

    from tests.conftest import tiny_config

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config(**kw)).eval()


def _batch(n: int = 3, length: int = 7) -> dict:
    ids = torch.randint(1000, 2000, (n, length))
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 0])[:n]}


def _distiller(student, teacher, **cfg):
    from slimformer.methods.distill.layerwise.config import IntermediateConfig
    from slimformer.methods.distill.layerwise.distiller import LayerwiseDistiller
    from slimformer.tasks import get_task

    task = get_task("sequence-classification")
    return LayerwiseDistiller(IntermediateConfig(**cfg), student, lambda: teacher, task.forward)


def test_projection_shapes_and_loss_backpropagates():
    teacher = _tiny(hidden_size=48, num_attention_heads=4, num_hidden_layers=4)
    student = _tiny(hidden_size=32, num_attention_heads=4, num_hidden_layers=2)
    lw = _distiller(
        student,
        teacher,
        terms={"embedding_mse": 1, "hidden_mse": 1, "attention_mse": 1, "attention_kl": 0.5},
    )
    assert lw.mapping == {0: 0, 1: 2, 2: 4}
    assert sorted(lw.projector.maps) == ["0", "1", "2"]
    assert lw.projector.maps["1"].weight.shape == (48, 32)  # student 32 -> teacher 48
    student.train()
    batch = _batch()
    with lw.student_recorder.record():
        student(**{k: v for k, v in batch.items() if k != "labels"})
    loss, logs = lw.loss(batch, 0.0)
    loss.backward()
    assert {"loss_embedding_mse", "loss_hidden_mse", "loss_attention_mse"} <= set(logs)
    assert lw.projector.maps["0"].weight.grad is not None
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    # the projections are not part of the student: nothing to drop when saving
    assert not any("maps" in k for k in student.state_dict())


def test_same_width_needs_no_projection():
    teacher = _tiny(num_hidden_layers=4)
    student = _tiny(num_hidden_layers=2)
    lw = _distiller(student, teacher, terms={"hidden_mse": 1})
    assert len(lw.projector.maps) == 0 and lw.describe()["projections"] == []


def test_attention_terms_with_different_head_counts_need_a_rule():
    teacher = _tiny(num_attention_heads=4)
    student = _tiny(num_attention_heads=2, num_hidden_layers=2)
    with pytest.raises(RecipeError, match="heads"):
        _distiller(student, teacher, terms={"attention_mse": 1})
    for rule in ({"heads": "mean"}, {"heads": "regroup", "relation_heads": 4}):
        lw = _distiller(student, teacher, terms={"attention_kl": 1}, **rule)
        batch = _batch()
        with lw.student_recorder.record():
            student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert torch.isfinite(lw.loss(batch, 0.5)[0])
    with pytest.raises(RecipeError, match="must divide"):
        _distiller(student, teacher, terms={"attention_kl": 1}, heads="regroup", relation_heads=5)


def test_identical_models_have_zero_layerwise_loss():
    teacher = _tiny(num_hidden_layers=2)
    student = _tiny(num_hidden_layers=2)  # same seed, same weights
    lw = _distiller(
        student,
        teacher,
        terms={"embedding_mse": 1, "hidden_mse": 1, "hidden_cosine": 1, "attention_mse": 1},
        mapping=[1, 2],
    )
    batch = _batch()
    with lw.student_recorder.record():
        student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert lw.loss(batch, 0.0)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_weight_schedules_apply_by_progress():
    teacher = _tiny(num_hidden_layers=2)
    student = _tiny(num_hidden_layers=2)
    sched = {"schedule": "linear", "start": 1.0, "end": 0.0}
    lw = _distiller(student, teacher, terms={"hidden_mse": sched})
    batch = _batch()
    with lw.student_recorder.record():
        student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert lw.loss(batch, 0.25)[1]["weight_hidden_mse"] == pytest.approx(0.75)


def test_two_stage_and_progressive_recipe_end_to_end(tiny_teacher, sst2_slice, tmp_path, cache_dir):
    """General distillation on plain text (a narrower random student, intermediate terms only),
    then a head-only stage, then task distillation on augmented data with T decaying 5 -> 1."""
    from transformers import AutoModelForSequenceClassification

    from slimformer.api import run
    from tests.conftest import sst2_recipe

    tree = sst2_recipe(tiny_teacher, sst2_slice)
    general = {
        "rows": "unlabeled",
        "prediction_weight": 0.0,
        "intermediate": {
            "terms": {"embedding_mse": 1, "hidden_mse": 1, "attention_kl": 1},
            "heads": "regroup",
            "relation_heads": 2,
        },
        "epochs": 1,
        "batch_size": 16,
        "learning_rate": 1e-3,
    }
    head = {"freeze_encoder": True, "epochs": 1, "batch_size": 16, "learning_rate": 1e-3}
    task = {
        "epochs": 1,
        "batch_size": 16,
        "learning_rate": 1e-3,
        "temperature": {"schedule": "linear", "start": 5, "end": 1},
        "prediction_weight": {"schedule": "linear", "start": 0.3, "end": 1.0},
        "intermediate": {
            "terms": {"hidden_mse": {"schedule": "linear", "start": 1, "end": 0}},
            "mapping": "last",
        },
        "augment": {"copies": 2, "replace": 0.4, "mask": 0.1, "ngram": 0.2, "max_examples": 32},
    }
    tree["student"] = {"layers": 2, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32}
    tree["data"] |= {"max_train_examples": 64, "unlabeled": {"source": "train-rest"}}
    tree["stages"] = [{"distill": general}, {"distill": head}, {"distill": task}]
    report = run(tree, tmp_path / "tb", cache_dir=str(cache_dir))
    g, h, t = (s for s in report["stages"])
    assert g["rows"] == "unlabeled" and g["steps"] == 12  # 192 unlabeled rows / 16
    assert g["intermediate"]["layer_mapping"] == {
        "student_0": "teacher_0",
        "student_1": "teacher_2",
        "student_2": "teacher_4",
    }
    assert g["intermediate"]["projections"] == [0, 1, 2]  # width 16 -> 32
    assert g["teacher_forward_examples"] == 0  # prediction weight 0: no logits needed
    assert h["encoder_frozen"] is True
    assert t["augment"]["augmented_examples"] == 64 and t["augment"]["augmented_from"] == 32
    assert t["intermediate"]["layer_mapping"]["student_1"] == "teacher_3"
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "tb" / "model")
    assert model.config.hidden_size == 16  # the projections were not saved with the student


def test_layerwise_resume_restores_projections(
    tiny_teacher, sst2_slice, tmp_path, cache_dir, monkeypatch
):
    """The projections train with the student and are checkpointed with it: a resumed run
    ends with the same student as an uninterrupted one."""
    from transformers import AutoModelForSequenceClassification

    import slimformer.pipeline.stages as stages
    import slimformer.train.loop as loop
    from slimformer.api import run
    from tests.conftest import sst2_recipe, train_crashing_after

    tree = sst2_recipe(
        tiny_teacher,
        sst2_slice,
        epochs=1,
        save_every=5,
        intermediate={"terms": {"hidden_mse": 1.0, "embedding_mse": 0.5}},
    )
    tree["student"] = {"layers": 2, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32}
    straight = run(tree, tmp_path / "straight", cache_dir=str(cache_dir))

    real_train = loop.train
    crash_after_7_steps = train_crashing_after(7)

    monkeypatch.setattr(stages, "train", crash_after_7_steps)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(tree, out, cache_dir=str(cache_dir))
    monkeypatch.setattr(stages, "train", real_train)
    resumed = run(tree, out, cache_dir=str(cache_dir), resume=True)
    assert resumed["stages"][0]["resumed_from_step"] == 5
    a = AutoModelForSequenceClassification.from_pretrained(tmp_path / "straight" / "model")
    b = AutoModelForSequenceClassification.from_pretrained(out / "model")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5), (name, (pa - pb).abs().max())
    assert straight["stages"][0]["intermediate"]["projections"] == [0, 1, 2]


def test_teacher_state_cache_matches_online_and_skips_the_teacher(tmp_path):
    import numpy as np

    from slimformer.methods.distill.layerwise.config import IntermediateConfig
    from slimformer.methods.distill.layerwise.distiller import LayerwiseDistiller
    from slimformer.methods.distill.layerwise.state_cache import TeacherStateCache
    from slimformer.tasks import get_task

    teacher = _tiny(hidden_size=48, num_hidden_layers=4)
    student = _tiny(num_hidden_layers=2)
    batch = _batch()
    batch["idx"] = torch.tensor([2, 0, 1])
    lengths = np.array([7, 7, 4])  # rows 0, 1 full; row 2 (batch row 0) has 4 tokens
    calls = {"n": 0}
    forward = get_task("sequence-classification").forward

    def counting_forward(model, b):
        calls["n"] += model is teacher
        return forward(model, b)

    def opener(layout):
        return TeacherStateCache(tmp_path, "t", "d", lengths, layout)

    cfg = IntermediateConfig(
        terms={"hidden_mse": 1, "attention_mse": 1, "embedding_mse": 1}, teacher_states="cache"
    )
    lw = LayerwiseDistiller(cfg, student, lambda: teacher, counting_forward, 0, opener)
    online = LayerwiseDistiller(
        cfg.model_copy(update={"teacher_states": "online"}),
        student,
        lambda: teacher,
        counting_forward,
        0,
        None,
    )
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    values = []
    for _ in range(2):
        with lw.student_recorder.record(), online.student_recorder.record():
            student(**inputs)
        values.append(lw.loss(batch, 0.0)[0].item())
    assert calls["n"] == 1  # the second pass read the cache
    expected = online.loss(batch, 0.0)[0].item()
    assert values[0] == values[1]  # the filling pass already reads back what it wrote
    assert values[1] == pytest.approx(expected, rel=1e-2)  # fp16 on disk
    # 7+7+4 tokens, no padding: hidden states of 3 layers a token; the teacher's attention
    # scores of 2 layers x 4 heads for each of the 7^2+7^2+4^2 pairs (not its q/k)
    assert lw.state_cache.shape == (18, 48 * 3)
    assert lw.state_cache.channels == 2 * 4
    assert lw.state_cache.size_gb * 2**30 == 2 * (18 * 48 * 3 + 114 * 8)


@pytest.mark.parametrize(
    ("stage", "match"),
    [
        ({"intermediate": {"terms": {"hidden_mze": 1}}}, "unknown layer-wise term"),
        ({"intermediate": {"terms": {"hidden_mse": -1}}}, "must be >= 0"),
        ({"intermediate": {"terms": {"attention_kl": 1}, "heads": "regroup"}}, "relation_heads"),
        ({"intermediate": {"terms": {"hidden_mse": 1}, "mapping": "every"}}, "mapping"),
        ({"prediction_weight": -0.5}, "prediction_weight"),
        ({"rows": "some"}, "rows"),
        ({"augment": {"replace": 0}}, "at least one"),
        ({"augment": {"copies": 0}}, "copies"),
    ],
)
def test_bad_layerwise_recipe_keys(tiny_teacher, sst2_slice, stage, match):
    from slimformer.pipeline.recipe import parse_recipe
    from tests.conftest import sst2_recipe

    with pytest.raises(RecipeError, match=match):
        parse_recipe(sst2_recipe(tiny_teacher, sst2_slice, **stage))


def test_layerwise_errors_before_training(tiny_teacher, sst2_slice, tmp_path, cache_dir):
    from slimformer.api import run
    from tests.conftest import sst2_recipe

    tree = sst2_recipe(tiny_teacher, sst2_slice, rows="unlabeled")
    with pytest.raises(RecipeError, match="needs data.unlabeled"):
        run(tree, tmp_path / "a", cache_dir=str(cache_dir))
    tree = sst2_recipe(tiny_teacher, sst2_slice, intermediate={"terms": {"hidden_mse": 1}})
    tree["stages"] = [{"prune": {**tree["stages"][0]["distill"], "heads": 0.5}}]
    with pytest.raises(RecipeError, match="distill stages only"):
        run(tree, tmp_path / "b", cache_dir=str(cache_dir))
    tree = sst2_recipe(
        tiny_teacher, sst2_slice, intermediate={"terms": {"attention_mse": 1}, "mapping": [1, 9]}
    )
    with pytest.raises(RecipeError, match="out of range"):
        run(tree, tmp_path / "c", cache_dir=str(cache_dir))


def test_one_teacher_pass_per_batch_and_bf16_stages(
    tiny_teacher, sst2_slice, tmp_path, cache_dir, monkeypatch
):
    """With layer-wise terms the teacher's forward for the hidden states also fills the logit
    cache (the soft-label path never runs it a second time); a bf16 stage (student autocast,
    teacher bf16) follows an fp32 one in the same process, its teacher outputs cached apart."""
    from slimformer.api import run
    from slimformer.methods.distill.teacher_targets import TeacherTargets
    from tests.conftest import sst2_recipe

    fills = []
    original = TeacherTargets._fill
    monkeypatch.setattr(
        TeacherTargets,
        "_fill",
        lambda self, *a: fills.append(self.cache.num_rows) or original(self, *a),
    )
    tree = sst2_recipe(tiny_teacher, sst2_slice)
    tree["student"] = {"layers": 2, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32}
    tree["data"] |= {"max_train_examples": 48}
    stage = {
        "epochs": 1,
        "batch_size": 16,
        "learning_rate": 1e-3,
        "intermediate": {
            "terms": {"hidden_mse": 1, "attention_kl": 1},
            "heads": "regroup",
            "relation_heads": 2,
        },
    }
    bf16 = stage | {"mixed_precision": "bf16", "teacher_precision": "bf16"}
    tree["stages"] = [{"distill": stage}, {"distill": bf16}]
    report = run(tree, tmp_path / "out", cache_dir=str(cache_dir / "one-pass"))
    fp32_stage, bf16_stage = report["stages"]
    # the teacher ran for logits on the eval set only (the fidelity reference): every training
    # row's logits came from the layer-wise teacher pass
    assert 48 not in fills and fills
    # both stages ran the teacher over their 48 rows before training (states cached apart)
    assert fp32_stage["teacher_pass"]["rows"] == bf16_stage["teacher_pass"]["rows"] == 48
    assert fp32_stage["teacher_precision"] == "fp32" and bf16_stage["teacher_precision"] == "bf16"
    assert fp32_stage["cache_dir"] != bf16_stage["cache_dir"]
    assert math.isfinite(report["student"]["metrics"]["accuracy"])


def test_bf16_teacher_copy_gives_autocast_bits_and_leaves_the_teacher_fp32():
    from slimformer.methods.distill.layerwise.recorder import Recorder
    from slimformer.methods.distill.teacher_targets import frozen_for_precision, teacher_precision

    teacher = _tiny(hidden_size=48, num_hidden_layers=2)
    assert frozen_for_precision(teacher, "fp32") is teacher
    cast = frozen_for_precision(teacher, "bf16")
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    assert cast.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16
    assert cast.bert.embeddings.word_embeddings.weight.dtype == torch.float32
    batch = _batch()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    outputs = []
    for model in (teacher, cast):
        rec = Recorder(model, [0, 1, 2], [1, 2])
        with torch.no_grad(), teacher_precision("bf16", "cpu"), rec.record():
            logits = model(**inputs).logits
        outputs.append([logits, *rec.hidden.values(), *rec.query.values(), *rec.key.values()])
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["states.npy", "pairs.npy"])
def test_teacher_state_cache_names_a_damaged_file(tmp_path, name):
    import numpy as np

    from slimformer.errors import DataError
    from slimformer.methods.distill.layerwise.state_cache import TeacherStateCache

    lengths, layout = np.array([3, 2]), [("hidden", 1, 4), ("probs", 1, 2)]
    cache = TeacherStateCache(tmp_path, "t", "d", lengths, layout)
    path = cache.dir / name
    cache.close()
    with open(path, "r+b") as f:  # cut the last rows off
        f.truncate(path.stat().st_size - 8)
    short = TeacherStateCache(tmp_path, "t", "d", lengths, layout)
    with pytest.raises(DataError, match="shorter than its header"):
        short.read(np.array([1]), torch.ones(1, 2))
    short.close()
    np.save(path, np.zeros((5, 3), dtype=np.float16))  # another layout's rows
    with pytest.raises(DataError, match="Delete"):
        TeacherStateCache(tmp_path, "t", "d", lengths, layout)


def _projections(widths: tuple[int, int], dtype=torch.float32, seed: int = 0):
    """Stacked q/k of 3 layers (student width, teacher width), batch 3 x 6 tokens, padding."""
    g = torch.Generator().manual_seed(seed)
    s_width, t_width = widths
    student = [torch.randn(3, 3, 6, s_width, generator=g, dtype=dtype) for _ in range(2)]
    teacher = [torch.randn(3, 3, 6, t_width, generator=g, dtype=dtype) for _ in range(2)]
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)
    return [x.requires_grad_() for x in student], teacher, mask


@pytest.mark.parametrize("name", ["attention_kl", "attention_mse"])
@pytest.mark.parametrize("widths,heads", [((24, 24), 3), ((16, 24), 4)])
def test_attention_terms_from_projections_match_the_per_layer_terms(name, widths, heads):
    """All layers in one autograd Function: the values and gradients of the per-layer terms
    on scores (same head count, and regrouped heads of different widths)."""
    from slimformer.methods.distill.layerwise.recorder import attention_scores

    term = LAYER_LOSSES.get(name)
    (q_s, k_s), (q_t, k_t), mask = _projections(widths)
    fused = term.from_projections(q_s, k_s, q_t, k_t, heads, mask)
    fused_grads = torch.autograd.grad(fused @ torch.tensor([1.0, 2.0, 3.0]), [q_s, k_s])
    per_layer = torch.stack(
        [
            term.fn(
                attention_scores(q_s[i], k_s[i], heads),
                attention_scores(q_t[i], k_t[i], heads),
                mask,
            )
            for i in range(3)
        ]
    )
    grads = torch.autograd.grad(per_layer @ torch.tensor([1.0, 2.0, 3.0]), [q_s, k_s])
    assert torch.allclose(fused, per_layer, atol=1e-6)
    for a, b in zip(fused_grads, grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_attention_kl_from_projections_matches_with_log_probabilities_under_the_fast_exp():
    """Peaked attention: real keys' log-probabilities far below -87, where the fused term's
    exp is clamped (its fast range); values and gradients stay those of the per-layer term."""
    from slimformer.methods.distill.layerwise.recorder import attention_scores

    term = LAYER_LOSSES.get("attention_kl")
    (q_s, k_s), (q_t, k_t), mask = _projections((24, 24))
    q_s, k_s = (x.detach().mul(4).requires_grad_() for x in (q_s, k_s))
    q_t, k_t = q_t * 4, k_t * 4
    scores = attention_scores(q_t[0], k_t[0], 3)
    assert (scores.log_softmax(-1)[..., :2] < -87).any()  # the clamp is reached
    fused = term.from_projections(q_s, k_s, q_t, k_t, 3, mask)
    fused_grads = torch.autograd.grad(fused.sum(), [q_s, k_s])
    per_layer = torch.stack(
        [
            term.fn(attention_scores(q_s[i], k_s[i], 3), attention_scores(q_t[i], k_t[i], 3), mask)
            for i in range(3)
        ]
    )
    grads = torch.autograd.grad(per_layer.sum(), [q_s, k_s])
    assert torch.allclose(fused, per_layer, rtol=1e-5)
    for a, b in zip(fused_grads, grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["attention_kl", "attention_mse"])
def test_attention_term_gradients_are_exactly_zero_at_padding_keys(name):
    """No denormals in the gradient: what exp gives the padding keys (~1e-38), once scaled,
    would make the gradient's batched matmuls ~70x slower on x86
    (benchmarks/cpu_exp_range.py). The padding tokens' key gradient is exactly 0."""
    term = LAYER_LOSSES.get(name)
    (q_s, k_s), (q_t, k_t), mask = _projections((24, 24))
    value = term.from_projections(q_s, k_s, q_t, k_t, 3, mask)
    g_q, g_k = torch.autograd.grad(value.sum(), [q_s, k_s])
    assert (g_k[:, ~mask] == 0).all()
    for g in (g_q, g_k):
        assert not ((g != 0) & (g.abs() < torch.finfo(g.dtype).tiny)).any()


@pytest.mark.parametrize("name", ["attention_kl", "attention_mse"])
def test_attention_terms_from_projections_pass_gradcheck(name):
    term = LAYER_LOSSES.get(name)
    (q_s, k_s), (q_t, k_t), mask = _projections((8, 8), torch.float64)
    assert torch.autograd.gradcheck(
        lambda q, k: term.from_projections(q, k, q_t, k_t, 2, mask), (q_s, k_s)
    )


def test_attention_terms_from_projections_keep_the_input_dtype_for_gradients():
    term = LAYER_LOSSES.get("attention_kl")
    (q_s, k_s), (q_t, k_t), mask = _projections((8, 8))
    q_s, k_s = (x.detach().bfloat16().requires_grad_() for x in (q_s, k_s))
    value = term.from_projections(q_s, k_s, q_t.half(), k_t.half(), 2, mask)
    assert value.dtype == torch.float32
    value.sum().backward()
    assert q_s.grad.dtype == k_s.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("rule", ["same", "regroup"])
def test_the_distillers_attention_terms_match_the_layer_by_layer_path(rule):
    """All layers in one call (same widths) or one call per layer (a pruned layer is narrower):
    the loss and gradients of the per-layer score path."""
    import dataclasses

    from slimformer.models.prune import prune_heads

    teacher = _tiny(hidden_size=32, num_attention_heads=4, num_hidden_layers=4)
    student = _tiny(hidden_size=32, num_attention_heads=4, num_hidden_layers=2)
    if rule == "regroup":
        student = prune_heads(student, {0: [0, 1]})  # layer 1 keeps 2 heads of 4
    extra = {"relation_heads": 2} if rule == "regroup" else {}
    lw = _distiller(
        student, teacher, terms={"attention_kl": 1.0, "attention_mse": 0.5}, heads=rule, **extra
    )
    student.train()
    batch = _batch()
    results = []
    for fused in (True, False):
        if not fused:
            lw.terms = {
                k: dataclasses.replace(v, from_projections=None) for k, v in lw.terms.items()
            }
        torch.manual_seed(1)  # the same dropout masks
        with lw.student_recorder.record():
            student(**{k: v for k, v in batch.items() if k != "labels"})
        loss, _ = lw.loss(batch, 0.0)
        params = [p for p in student.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)  # the head: unused
        results.append((loss, grads))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=1e-6)
    assert sum(x is not None for x in ga) > 10
    for x, y in zip(ga, gb, strict=True):
        assert (x is None and y is None) or torch.allclose(x, y, atol=1e-6)


def test_attention_widths_that_do_not_split_into_the_heads_are_refused():
    from slimformer.errors import ModelError
    from slimformer.methods.distill.layerwise.recorder import attention_scores

    (q_s, k_s), (q_t, k_t), mask = _projections((8, 12))
    with pytest.raises(ModelError, match="width 12 does not split into 8 heads"):
        LAYER_LOSSES.get("attention_kl").from_projections(q_s, k_s, q_t, k_t, 8, mask)
    with pytest.raises(ModelError, match="width 8 does not split into 3 heads"):
        attention_scores(q_s[0], k_s[0], 3)


def test_teacher_pass_fills_the_state_cache_before_training(tmp_path):
    """The pass over all rows (longest first, token-budget batches) leaves nothing for the
    training batches to compute, and the values it stores are those a training batch would."""
    import datasets
    import numpy as np

    from slimformer.methods.distill.layerwise.config import IntermediateConfig
    from slimformer.methods.distill.layerwise.distiller import LayerwiseDistiller
    from slimformer.methods.distill.layerwise.state_cache import TeacherStateCache
    from slimformer.methods.distill.layerwise.teacher_pass import fill_state_cache
    from slimformer.tasks import get_task
    from tests.conftest import pad_collate

    teacher = _tiny(hidden_size=48, num_hidden_layers=4)
    student = _tiny(num_hidden_layers=2)
    lengths = np.array([5, 9, 3, 7, 9, 2])
    g = torch.Generator().manual_seed(0)
    ds = datasets.Dataset.from_dict(
        {
            "input_ids": [torch.randint(1000, 2000, (n,), generator=g).tolist() for n in lengths],
            "labels": [0, 1, 0, 1, 1, 0],
            # row 5 repeats row 1's index (an example listed twice runs once)
            "idx": [0, 1, 2, 3, 4, 1],
        }
    )
    lengths[5] = lengths[1]

    forward = get_task("sequence-classification").forward
    calls = {"n": 0}

    def counting_forward(model, b):
        calls["n"] += model is teacher
        return forward(model, b)

    cfg = IntermediateConfig(terms={"hidden_mse": 1, "attention_kl": 1}, teacher_states="cache")
    lw = LayerwiseDistiller(
        cfg,
        student,
        lambda: teacher,
        counting_forward,
        0,
        lambda layout: TeacherStateCache(tmp_path, "t", "d", lengths[:5], layout),
    )
    offered = []
    lw.on_teacher_output = lambda batch, values: offered.extend(batch["idx"].tolist())
    cpu = torch.device("cpu")
    assert fill_state_cache(lw, ds, pad_collate, cpu, tokens=18, max_rows=4) == 5
    assert sorted(offered) == [0, 1, 2, 3, 4]  # the logit cache got every row once
    assert not lw.state_cache.missing(np.arange(5)).any()
    passes = calls["n"]
    assert passes == 3  # lengths 9 9 7 5 3 in batches of <= 18 padded tokens: [9 9] [7 5] [3]
    assert fill_state_cache(lw, ds, pad_collate, cpu) == 0  # nothing left: no teacher pass

    batch = pad_collate([ds[i] for i in (3, 0, 2)])
    online = LayerwiseDistiller(
        cfg.model_copy(update={"teacher_states": "online"}), student, lambda: teacher, forward
    )
    with lw.student_recorder.record(), online.student_recorder.record():
        student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    cached = lw.loss(batch, 0.0)[0].item()
    assert calls["n"] == passes  # served from the cache
    assert cached == pytest.approx(online.loss(batch, 0.0)[0].item(), rel=1e-2)  # fp16 on disk


@pytest.mark.parametrize("rule", ["same", "regroup", "mean", "same-pruned", "regroup-pruned"])
def test_cached_teacher_attention_matches_the_online_terms(rule, tmp_path):
    """The state cache keeps the fused attention terms' teacher side (probabilities for KL,
    scores for MSE) instead of q/k where every mapped layer splits into the same heads; the
    loss and gradients are the online ones up to fp16 on disk. Otherwise (mean over heads,
    pruned layers with other head counts) it keeps q/k as before."""
    import numpy as np

    from slimformer.methods.distill.layerwise.config import IntermediateConfig
    from slimformer.methods.distill.layerwise.distiller import LayerwiseDistiller
    from slimformer.methods.distill.layerwise.state_cache import TeacherStateCache
    from slimformer.models.prune import prune_heads
    from slimformer.tasks import get_task

    teacher = _tiny(hidden_size=48, num_hidden_layers=4)
    student = _tiny(num_hidden_layers=2)
    if rule == "same-pruned":  # student layer 1 <-> teacher layer 2: both keep 2 heads of 4
        teacher, student = prune_heads(teacher, {1: [0, 1]}), prune_heads(student, {0: [2, 3]})
    if rule == "regroup-pruned":  # the student's layers differ in width: one call per layer
        student = prune_heads(student, {0: [2, 3]})
    batch = _batch()
    batch["idx"] = torch.tensor([2, 0, 1])
    regroup = rule.startswith("regroup")
    extra = {"relation_heads": 4, "heads": "regroup"} if regroup else {}
    if rule == "mean":
        extra = {"heads": "mean"}
    cfg = IntermediateConfig(
        terms={"attention_kl": 1.0, "attention_mse": 0.5, "hidden_mse": 1.0}, **extra
    )
    forward = get_task("sequence-classification").forward
    opener = lambda layout: TeacherStateCache(tmp_path, "t", "d", np.array([7, 7, 4]), layout)  # noqa: E731
    cached = LayerwiseDistiller(cfg, student, lambda: teacher, forward, 0, opener)
    online = LayerwiseDistiller(
        cfg.model_copy(update={"teacher_states": "online"}), student, lambda: teacher, forward
    )
    kinds = {kind for kind, _, _ in cached.state_cache.pair_layout}
    tokens = {kind for kind, _, _ in cached.state_cache.layout}
    if rule in ("same", "regroup", "regroup-pruned"):
        assert kinds == {"probs", "scores"} and tokens == {"hidden"}
        assert cached.state_cache.pair_heads == 4
    else:
        assert kinds == set() and tokens == {"hidden", "query", "key"}
    student.train()
    results = []
    for lw in (cached, cached, online):  # the filling pass, a read, online
        torch.manual_seed(1)  # the same dropout masks
        with lw.student_recorder.record():
            student(**{k: v for k, v in batch.items() if k not in ("labels", "idx")})
        loss, logs = lw.loss(batch, 0.0)
        params = [p for p in student.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        results.append((loss, logs, grads))
    (filled, _, g_filled), (read, logs, g_read), (expected, logs_online, g_online) = results
    assert filled.item() == read.item()  # the filling pass gives what a read gives
    for name in ("loss_attention_kl", "loss_attention_mse"):  # fp16 probabilities: ~1e-6 off
        assert logs[name] == pytest.approx(logs_online[name], rel=2e-3, abs=1e-5)
    for a, b, c in zip(g_filled, g_read, g_online, strict=True):
        if a is None:
            assert b is None and c is None
            continue
        assert torch.equal(a, b)
        assert (a - c).norm() <= 1e-2 * c.norm()


@pytest.mark.parametrize("padding", ["right", "left", "holes", "empty row"])
def test_state_cache_pairs_round_trip_whatever_the_padding(padding):
    """The teacher's attention pairs are stored example after example in (part, head, query,
    key) order over the real tokens, and scattered back with zeros elsewhere: by slices where
    each row's tokens are one run, by a boolean index otherwise; both give the same."""
    from slimformer.methods.distill.layerwise.state_cache import _gather_pairs, _scatter_pairs

    lengths = torch.tensor([5, 3, 4])
    mask = torch.arange(5)[None] < lengths[:, None]
    if padding == "left":
        mask = mask.flip(1)
    elif padding == "holes":
        mask[0, 1] = False
    elif padding == "empty row":
        mask[1] = False
    pairs = torch.randn(2, 3, 4, 5, 5)  # (parts, B, heads, L, L)
    real = mask[None, :, None, :, None] & mask[None, :, None, None, :]
    flat = _gather_pairs(pairs, mask)
    expected = torch.cat([pairs[:, b][real[:, b].expand(2, 4, 5, 5)] for b in range(3)])
    assert torch.equal(flat, expected)
    assert torch.equal(_scatter_pairs(flat, mask, pairs.shape), pairs * real)
