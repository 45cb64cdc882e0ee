"""Causal-LM distillation on a tiny random Llama (MiniLM's tokenizer): losses against values
computed by hand, the top-k cache, layer ranking, text reading, and a run end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, pipeline

from slimformer.data.lm_corpus import corpus_files, pack_blocks, read_lines
from slimformer.errors import DataError, ModelError, RecipeError
from slimformer.methods.distill.losses import HARD_LOSSES, SOFT_LOSSES
from slimformer.methods.distill.losses.token_support import TopKLogProbs, teacher_bins
from slimformer.methods.distill.topk_cache import TopKCache
from slimformer.methods.prune.layer_ranking import (
    greedy_round_sizes,
    keep_by_angular_distance,
    keep_by_block_influence,
    keep_by_greedy_divergence,
)
from slimformer.pipeline.recipe import parse_recipe
from slimformer.pipeline.runner import run_recipe
from tests.conftest import SHARED

WIKI = SHARED / "data" / "text" / "wikitext2"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lm_text(tmp_path_factory) -> dict[str, Path]:
    """Real WikiText-2 slices: training text from the valid split, eval text from the test."""
    folder = tmp_path_factory.mktemp("lm_text")
    train, evl = folder / "train.txt", folder / "eval.txt"
    train.write_bytes((WIKI / "wiki.valid.tokens").read_bytes()[:12000])
    evl.write_bytes((WIKI / "wiki.test.raw").read_bytes()[:6000])
    return {"train": train, "eval": evl}


def lm_recipe(teacher: Path, text: dict, **distill) -> dict:
    stage = {
        "epochs": 1,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "soft": "forward_kl",
        "alpha": 0.5,
        "temperature": 1.0,
        "top_k": 8,
        "save_every": 5,
    }
    stage.update(distill)
    return {
        "task": "causal-lm",
        "teacher": {"model": str(teacher)},
        "student": {"layers": 2, "layer_selection": "block_influence", "selection_examples": 4},
        "data": {
            "train": [str(text["train"])],
            "eval": str(text["eval"]),
            "max_length": 32,
            "eval_block_size": 64,
            "eval_max_tokens": 256,
        },
        "stages": [{"distill": stage}],
        "report": {
            "generation": {
                "prompts": 2,
                "prompt_tokens": 6,
                "agreement_tokens": 5,
                "speed_new_tokens": 4,
                "speed_batch_sizes": [1, 2],
                "rounds": 1,
            }
        },
    }


# ---- losses, by hand -------------------------------------------------------------------


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _softmax(x):
    e = [math.exp(v) for v in x]
    return [v / sum(e) for v in e]


S = [[1.0, 0.0, -1.0, 0.5], [0.2, 0.1, 0.0, -0.3], [5.0, 0.0, 0.0, 0.0]]
T = [[0.0, 1.0, -0.5, 0.5], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0]]
MASK = torch.tensor([True, True, False])  # the third position is padding: it must not count


def _mean_first_two(fn):
    return (fn(_softmax(T[0]), _softmax(S[0])) + fn(_softmax(T[1]), _softmax(S[1]))) / 2


def test_forward_and_reverse_kl_by_hand():
    s, t = torch.tensor(S), torch.tensor(T)
    fwd = SOFT_LOSSES.get("forward_kl")(s, t, MASK, 1.0)
    rev = SOFT_LOSSES.get("reverse_kl")(s, t, MASK, 1.0)
    assert fwd.item() == pytest.approx(_mean_first_two(_kl), rel=1e-5)
    assert rev.item() == pytest.approx(_mean_first_two(lambda p, q: _kl(q, p)), rel=1e-5)
    # temperature: T^2 * KL of the softened distributions
    soft = SOFT_LOSSES.get("forward_kl")(s, t, MASK, 2.0)
    by_hand = sum(
        _kl(_softmax([v / 2 for v in T[i]]), _softmax([v / 2 for v in S[i]])) for i in (0, 1)
    )
    assert soft.item() == pytest.approx(4 * by_hand / 2, rel=1e-5)


def test_jsd_and_skew_kl_by_hand():
    s, t = torch.tensor(S), torch.tensor(T)

    def jsd(p, q, beta=0.3):
        m = [beta * a + (1 - beta) * b for a, b in zip(p, q, strict=True)]
        return beta * _kl(p, m) + (1 - beta) * _kl(q, m)

    def skew(p, q, a=0.1):
        return _kl(p, [a * x + (1 - a) * y for x, y in zip(p, q, strict=True)])

    got = SOFT_LOSSES.get("jsd")(s, t, MASK, 1.0, beta=0.3)
    assert got.item() == pytest.approx(_mean_first_two(jsd), rel=1e-5)
    got = SOFT_LOSSES.get("skew_kl")(s, t, MASK, 1.0, skew=0.1)
    assert got.item() == pytest.approx(_mean_first_two(skew), rel=1e-5)
    with pytest.raises(ValueError, match="beta"):
        SOFT_LOSSES.get("jsd")(s, t, MASK, 1.0, beta=1.0)


def test_picked_log_probs_match_log_softmax_in_value_and_gradient(monkeypatch):
    """The chunked log-normaliser path (CE and the top-k terms use it) equals a full
    log_softmax + gather, forward and backward, at T != 1, across several row chunks, with a
    repeated index in a row."""
    from slimformer.methods.distill.losses import picked_log_probs as module
    from slimformer.methods.distill.losses.picked_log_probs import picked_log_probs

    monkeypatch.setattr(module, "CHUNK_VALUES", 44)  # 4 rows of 11 per chunk: 10 chunks
    torch.manual_seed(0)
    logits = torch.randn(37, 11, dtype=torch.float64)
    idx = torch.randint(0, 11, (37, 3))
    idx[0, 1] = idx[0, 0]
    weights = torch.randn(37, 3, dtype=torch.float64)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    got = picked_log_probs(a, idx, 2.0)
    want = torch.log_softmax(b / 2.0, -1).gather(-1, idx)
    assert torch.allclose(got, want.float(), atol=1e-6)
    (got.double() * weights).sum().backward()
    (want * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    hard = HARD_LOSSES.get("ce")(logits, idx[:, 0], torch.ones(37, dtype=torch.bool))
    assert math.isclose(
        float(hard), float(torch.nn.functional.cross_entropy(logits, idx[:, 0])), rel_tol=1e-6
    )


def test_shared_picks_equal_separate_kd_and_ce_with_one_backward_pass(monkeypatch):
    """Top-k KD + CE on the same logits through ``shared_picks``: the same loss and gradient as
    two separate picks, from one normaliser node (one pass over the logits each way)."""
    from slimformer.methods.distill.losses import picked_log_probs as module
    from slimformer.methods.distill.losses.picked_log_probs import shared_picks

    torch.manual_seed(0)
    logits = torch.randn(13, 40, dtype=torch.float64)
    teacher_logp = torch.log_softmax(torch.randn(13, 40), -1).topk(5, -1)
    teacher = TopKLogProbs(teacher_logp.indices, teacher_logp.values, vocab_size=40)
    labels = torch.randint(0, 40, (13,))
    labels[3] = -100
    mask = labels >= 0

    def loss(x):
        kd = SOFT_LOSSES.get("forward_kl")(x, teacher, mask, 1.0)
        return 0.5 * kd + 0.5 * HARD_LOSSES.get("ce")(x, labels, mask)

    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    calls = []
    original = module._PickedLogProbs.forward

    def counting(ctx, *args):
        calls.append(args[1].shape)
        return original(ctx, *args)

    monkeypatch.setattr(module._PickedLogProbs, "forward", staticmethod(counting))
    separate = loss(a)
    assert len(calls) == 2
    calls.clear()
    with shared_picks(b, [teacher.indices, labels.clamp(min=0)[:, None]]):
        shared = loss(b)
    assert calls == [torch.Size([13, 6])] and not module._SHARED
    assert torch.allclose(separate, shared)
    separate.backward()
    shared.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-7)


def test_top_k_with_tail_mass_by_hand():
    """Vocabulary 4, k = 2: bins = the teacher's two tokens + the tail (the other two)."""
    s, t = torch.tensor(S[:1]), torch.tensor(T[:1])
    log_p = torch.log_softmax(t, -1)
    top = log_p.topk(2, -1)
    sparse = TopKLogProbs(top.indices, top.values, vocab_size=4)
    p, q = _softmax(T[0]), _softmax(S[0])
    keep = top.indices[0].tolist()
    rest = [i for i in range(4) if i not in keep]
    p_bins = [p[i] for i in keep] + [sum(p[i] for i in rest)]
    q_bins = [q[i] for i in keep] + [sum(q[i] for i in rest)]
    mask = torch.tensor([True])
    got = SOFT_LOSSES.get("forward_kl")(s, sparse, mask, 1.0)
    assert got.item() == pytest.approx(_kl(p_bins, q_bins), rel=1e-5)
    # k = V: no tail, same as the dense loss
    full = log_p.topk(4, -1)
    dense = SOFT_LOSSES.get("forward_kl")(s, t, mask, 1.0)
    got = SOFT_LOSSES.get("forward_kl")(s, TopKLogProbs(full.indices, full.values, 4), mask, 1.0)
    assert got.item() == pytest.approx(dense.item(), abs=1e-5)
    # T != 1: the tail is spread evenly over the V - k tokens, each raised to 1/T
    bins = teacher_bins(sparse, 2.0).exp()[0].tolist()
    tail_each = p_bins[2] / 2
    raw = [p_bins[0] ** 0.5, p_bins[1] ** 0.5, 2 * tail_each**0.5]
    assert bins == pytest.approx([v / sum(raw) for v in raw], rel=1e-5)


def test_top_k_cache_round_trip(tmp_path):
    cache = TopKCache(tmp_path, "t", "d", rows=3, positions=5, k=4)
    lp = torch.log_softmax(torch.randn(2, 5, 4), -1)
    ix = torch.randint(0, 1000, (2, 5, 4))
    cache.write(np.array([2, 0]), lp, ix)
    assert cache.missing(np.arange(3)).tolist() == [False, True, False]
    again = TopKCache(tmp_path, "t", "d", rows=3, positions=5, k=4)  # reopened from disk
    got_lp, got_ix = again.read(np.array([0, 2]))
    assert torch.equal(got_ix, torch.cat([ix[1], ix[0]]).reshape(-1, 4))
    assert torch.allclose(got_lp, torch.cat([lp[1], lp[0]]).reshape(-1, 4), atol=2e-3)


# ---- layer ranking -----------------------------------------------------------------------


def test_layer_ranking_rules():
    # 4 blocks; states 0..4. Block 1 and 2 barely change the stream (cos 0.99).
    cos = torch.eye(5)
    for i, c in enumerate([0.5, 0.99, 0.98, 0.6]):
        cos[i, i + 1] = cos[i + 1, i] = c
    cos[1, 3] = cos[3, 1] = 0.97
    cos[0, 2] = cos[2, 0] = cos[2, 4] = cos[4, 2] = 0.3
    assert keep_by_block_influence(cos, 2) == [0, 3]
    assert keep_by_angular_distance(cos, 2) == [0, 3]  # drops the run 1..2 (cos 0.97)
    assert keep_by_angular_distance(cos, 4) == [0, 1, 2, 3]


def test_greedy_divergence_drops_no_op_blocks_first(tiny_llama):
    """Blocks 1 and 2 are made exact no-ops (zero output projections): removing them leaves
    the outputs unchanged, so greedy removal takes them first, with KL 0, and restores the
    model afterwards."""
    from slimformer.tasks import get_task

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    for i in (1, 2):
        torch.nn.init.zeros_(model.model.layers[i].self_attn.o_proj.weight)
        torch.nn.init.zeros_(model.model.layers[i].mlp.down_proj.weight)
    ids = torch.randint(5, 100, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    before = model(**batch).logits
    keep, trace = keep_by_greedy_divergence(model, get_task("causal-lm").forward, [batch], 2)
    assert keep == [0, 3]
    assert {t["dropped"] for t in trace} == {1, 2}
    assert all(t["kl_alone"] < 1e-3 for t in trace), trace  # bf16-stored reference: ~0, not 0
    assert greedy_round_sizes(30, 14) == [6, 4, 2, 2, 1, 1] and greedy_round_sizes(3, 3) == []
    assert len(model.model.layers) == 4 and model.config.use_cache is True
    assert torch.allclose(model(**batch).logits, before)


# ---- text reading ------------------------------------------------------------------------


def test_text_sources_latin1_crlf_and_globs(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_bytes(
        "caf\xe9 au lait\r\nsecond line\r\n".encode("latin-1")
    )
    (tmp_path / "books" / "b.txt").write_text("plain utf-8 — text\n", encoding="utf-8")
    lines = read_lines([str(tmp_path / "books")])["text"]
    assert lines == ["café au lait\n", "second line\n", "plain utf-8 — text\n"]
    assert corpus_files(str(tmp_path / "books" / "*.txt")) == sorted(
        (tmp_path / "books").glob("*.txt")
    )
    with pytest.raises(DataError, match="matches no file"):
        corpus_files(str(tmp_path / "nothing-here.txt"))
    with pytest.raises(DataError, match="fewer than one block"):
        pack_blocks(np.arange(10), 32, "training")


# ---- end to end --------------------------------------------------------------------------


def test_forward_keeps_only_predicting_positions(tiny_llama):
    """With ``logits_to_keep`` the LM head runs on the L-1 predicting positions: same values
    as slicing the full output, and a contiguous tensor (no copy in the reshape)."""
    from slimformer.tasks.causal_lm import CausalLM, accepts_logits_to_keep

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    batch = {"input_ids": torch.randint(5, 100, (2, 9)), "attention_mask": torch.ones(2, 9)}
    assert accepts_logits_to_keep(model)
    with torch.no_grad():
        out = CausalLM().forward(model, batch)
        full = model(**batch).logits[:, :-1].reshape(-1, model.config.vocab_size)
    torch.testing.assert_close(out.values, full)
    assert out.values.shape == (16, model.config.vocab_size) and out.mask.all()


def test_bf16_training_keeps_logits_in_bf16(tiny_llama, lm_text, tmp_path, cache_dir, monkeypatch):
    """Under bf16 mixed precision the causal-LM losses see bf16 logits (accelerate's cast of
    every output to fp32 is dropped for this task) and training still lowers the loss."""
    from slimformer.methods.distill.losses import picked_log_probs as module

    seen = []
    original = module._PickedLogProbs.forward

    def spy(ctx, logits, indices, temperature):
        seen.append(logits.dtype)
        return original(ctx, logits, indices, temperature)

    monkeypatch.setattr(module._PickedLogProbs, "forward", staticmethod(spy))
    recipe = lm_recipe(tiny_llama, lm_text, mixed_precision="bf16")
    report = run_recipe(parse_recipe(recipe), tmp_path / "run", cache_dir=cache_dir)
    assert seen and set(seen) == {torch.bfloat16}
    assert math.isfinite(report["student"]["metrics"]["perplexity"])


def test_distill_run_end_to_end(tiny_llama, lm_text, tmp_path, cache_dir):
    report = run_recipe(
        parse_recipe(lm_recipe(tiny_llama, lm_text)), tmp_path / "run", cache_dir=cache_dir
    )
    for role in ("teacher", "student"):
        assert set(report[role]["metrics"]) >= {"perplexity", "nll"}
        assert report[role]["generation"]["tokens_per_s_bs1"] > 0
    s = report["student"]
    assert (
        s["layers"] == 2 and s["non_embedding_params"] < report["teacher"]["non_embedding_params"]
    )
    assert len(s["init"]["teacher_layers"]) == 2 and len(s["init"]["block_influence"]) == 4
    assert 0 <= s["metrics"]["teacher_top1_agreement"] <= 1
    assert set(s["metrics"]["generation_agreement"]) == {"token_match", "rouge_l", "new_tokens"}
    assert {"generate_bs1", "generate_bs2", "ttft_bs1"} <= set(report["speedup"])
    assert report["perplexity_ratio"] > 0
    stage = report["stages"][0]
    assert stage["teacher_logits"] == "topk (k=8)" and stage["topk_cache"]["fill_seconds"] >= 0
    # the student loads as a plain transformers model and generates
    folder = tmp_path / "run" / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 2
    gen = pipeline("text-generation", model=str(folder), tokenizer=str(folder))
    out = gen("the history of the", max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"].startswith("the history of the")
    # a second run reads the top-k cache: the teacher runs on no training block
    again = run_recipe(
        parse_recipe(lm_recipe(tiny_llama, lm_text, soft="reverse_kl")),
        tmp_path / "run2",
        cache_dir=cache_dir,
    )
    assert again["stages"][0]["teacher_forward_examples"] == 0


def test_online_teacher_and_jsd(tiny_llama, lm_text, tmp_path, cache_dir):
    recipe = lm_recipe(
        tiny_llama, lm_text, soft="jsd", soft_options={"beta": 0.5}, teacher_logits="online"
    )
    recipe["data"]["max_train_examples"] = 8
    report = run_recipe(parse_recipe(recipe), tmp_path / "run", cache_dir=cache_dir)
    stage = report["stages"][0]
    assert stage["teacher_logits"] == "online" and stage["teacher_forward_examples"] == 8


def test_clear_errors(tiny_llama, lm_text, tmp_path, cache_dir, tiny_teacher):
    with pytest.raises(RecipeError, match="top_k"):
        run_recipe(
            parse_recipe(lm_recipe(tiny_llama, lm_text, top_k=10**6)),
            tmp_path / "a",
            cache_dir=cache_dir,
        )
    # a student with another tokenizer
    other = tmp_path / "other_student"
    model = LlamaForCausalLM.from_pretrained(tiny_llama)
    model.save_pretrained(other)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(other)
    recipe = lm_recipe(tiny_llama, lm_text)
    recipe["student"] = {"model": str(other)}
    with pytest.raises(ModelError, match="different tokenizer"):
        run_recipe(parse_recipe(recipe), tmp_path / "b", cache_dir=cache_dir)
    # settings a causal-lm stage does not take, and a missing GGUF file
    with pytest.raises(RecipeError, match="augment"):
        parse_recipe(lm_recipe(tiny_llama, lm_text, augment={"copies": 1}))
    recipe = lm_recipe(tiny_llama, lm_text)
    recipe["teacher"]["model"] = str(tmp_path / "missing.gguf")
    with pytest.raises(ModelError, match="GGUF file"):
        run_recipe(parse_recipe(recipe), tmp_path / "c", cache_dir=cache_dir)
    with pytest.raises(RecipeError, match="causal-lm only"):
        bad = yaml.safe_load(yaml.safe_dump(lm_recipe(tiny_teacher, lm_text)))
        bad["task"] = "sequence-classification"
        parse_recipe(bad)


@pytest.mark.parametrize("states", ["cache", "online"])
def test_feature_distillation_hidden_states(tiny_llama, lm_text, tmp_path, cache_dir, states):
    """Hidden-state terms on a decoder: a narrower random student (width 16 -> the teacher's 32
    through a learned projection, not saved) and a copied one; uniform mapping by default."""
    inter = {"terms": {"hidden_mse": 1.0, "hidden_cosine": 0.5}, "teacher_states": states}
    recipe = lm_recipe(tiny_llama, lm_text, intermediate=inter)
    recipe["data"]["max_train_examples"] = 8
    recipe["student"] = {"layers": 2, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32}
    report = run_recipe(parse_recipe(recipe), tmp_path / "narrow", cache_dir=cache_dir)
    stage = report["stages"][0]["intermediate"]
    assert stage["layer_mapping"] == {
        "student_0": "teacher_0",
        "student_1": "teacher_2",
        "student_2": "teacher_4",
    }
    assert stage["projections"] == [1, 2]
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "narrow" / "model")
    assert saved.config.hidden_size == 16  # the projection is not part of the student
    assert not any("maps" in name for name, _ in saved.named_parameters())
    assert math.isfinite(report["student"]["metrics"]["perplexity"])
    if states == "cache":
        assert Path(stage["teacher_state_cache"]["dir"]).is_dir()


def test_attention_terms_are_refused_for_decoders(tiny_llama, lm_text):
    inter = {"terms": {"hidden_mse": 1.0, "attention_kl": 1.0}}
    with pytest.raises(RecipeError, match="attention_kl compare attention scores"):
        parse_recipe(lm_recipe(tiny_llama, lm_text, intermediate=inter))


def test_lora_student_is_merged(tiny_llama, lm_text, tmp_path, cache_dir):
    recipe = lm_recipe(tiny_llama, lm_text)
    recipe["student"] = {
        "layers": 2,
        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
    }
    recipe["data"]["max_train_examples"] = 8
    report = run_recipe(parse_recipe(recipe), tmp_path / "run", cache_dir=cache_dir)
    lora = report["stages"][0]["lora"]
    assert 0 < lora["trainable_params"] < lora["base_params"] and lora["r"] == 2
    folder = tmp_path / "run" / "model"
    assert not (folder / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(folder)
    base = LlamaForCausalLM.from_pretrained(tiny_llama)
    # the adapters changed the attention weights they were put on, and nothing else
    layer = report["student"]["init"]["teacher_layers"][0]
    q_new = merged.model.layers[0].self_attn.q_proj.weight
    q_old = base.model.layers[layer].self_attn.q_proj.weight
    assert not torch.allclose(q_new, q_old)
    k_new = merged.model.layers[0].self_attn.k_proj.weight
    assert torch.equal(k_new, base.model.layers[layer].self_attn.k_proj.weight)


# ---- prompt/response data and sequence-level KD -----------------------------------------


def test_chat_template_masks_the_prompt(tokenizer):
    import copy

    import datasets

    from slimformer.data.chat_pairs import encode_pairs

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}user : {{ m['content'] }} .{% endfor %}"
        "{% if add_generation_prompt %} assistant :{% endif %}"
    )
    ds = datasets.Dataset.from_dict({"prompt": ["name a colour"], "response": ["blue"]})
    row = encode_pairs(ds, tok, "prompt", "response", max_length=16)[0]
    prompt_ids = tok("user : name a colour . assistant :", add_special_tokens=False)["input_ids"]
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []  # BERT's has none
    answer = tok("blue", add_special_tokens=False)["input_ids"] + eos
    n = len(prompt_ids)
    assert row["input_ids"][:n] == prompt_ids
    assert row["labels"][:n] == [-100] * n  # the prompt never trains
    assert row["labels"][n : n + len(answer)] == answer[: 16 - n]
    assert row["labels"][n + len(answer) :] == [-100] * (16 - n - len(answer))  # padding
    assert row["attention_mask"] == [1] * (n + len(answer)) + [0] * (16 - n - len(answer))


def test_sequence_level_kd_end_to_end(tiny_llama, lm_text, tmp_path, cache_dir):
    import json

    from slimformer.pipeline.generate import generate_responses

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"the story of {w} is"}) + "\n" for w in "abcdefgh")
    )
    info = generate_responses(
        str(tiny_llama), str(prompts), tmp_path / "answers", max_new_tokens=6, batch_size=4
    )
    assert info["examples"] == 8 and info["settings"]["do_sample"] is False
    rows = [
        json.loads(x) for x in (tmp_path / "answers" / "generations.jsonl").read_text().splitlines()
    ]
    assert [r["prompt"] for r in rows] == [f"the story of {w} is" for w in "abcdefgh"]
    recipe = lm_recipe(tiny_llama, lm_text)
    recipe["data"]["train"] = str(tmp_path / "answers" / "generations.jsonl")
    report = run_recipe(parse_recipe(recipe), tmp_path / "run", cache_dir=cache_dir)
    assert report["stages"][0]["teacher_forward_examples"] == 8
    assert report["student"]["metrics"]["perplexity"] > 0
    # a prompt set without its prompt column
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(DataError, match="prompt"):
        generate_responses(str(tiny_llama), str(bad), tmp_path / "nope")


# ---- width pruning -----------------------------------------------------------------------


def test_width_pruning_removes_dead_units_exactly(tiny_llama):
    from slimformer.methods.prune.decoder_width import prune_decoder_width, width_importance

    model = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        for block in model.model.layers:
            block.mlp.gate_proj.weight[32:] = 0  # channels 32.. output silu(0) * up = 0
            block.self_attn.v_proj.weight[8:] = 0  # group 1 (kv head 1, head_dim 8) outputs 0
    ids = torch.randint(5, 1000, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    before = model(**batch).logits
    scores = width_importance(model, [batch])
    prune_decoder_width(model, scores, intermediate_size=32, kv_heads=1)
    after = model(**batch).logits
    assert torch.allclose(before, after, atol=1e-5)
    block = model.model.layers[0]
    assert block.mlp.gate_proj.out_features == 32 and block.mlp.down_proj.in_features == 32
    assert block.self_attn.k_proj.out_features == 8 and block.self_attn.q_proj.out_features == 16
    cfg = model.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (32, 2, 1)
    assert cfg.head_dim == 8


def test_depth_and_width_pruned_student_generates(tiny_llama, lm_text, tmp_path, cache_dir):
    recipe = lm_recipe(tiny_llama, lm_text)
    recipe["student"].update(layer_selection="greedy_kl", selection_precision="bf16")
    recipe["student"]["width_pruning"] = {"intermediate_size": 48, "kv_heads": 1}
    recipe["data"]["max_train_examples"] = 8
    report = run_recipe(parse_recipe(recipe), tmp_path / "run", cache_dir=cache_dir)
    removals = report["student"]["init"]["greedy_removals"]
    assert len(removals) == 2 and len(report["student"]["init"]["teacher_layers"]) == 2
    info = report["student"]["init"]["width_pruning"]
    assert info["params_after"] < info["params_before"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")  # plain loader
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.intermediate_size, cfg.num_key_value_heads) == (2, 48, 1)
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


# ---- two processes ------------------------------------------------------------------------


def test_two_process_accelerate_launch_matches_one(tiny_llama, lm_text, tmp_path):
    """The same recipe under `accelerate launch` with 2 CPU processes (gloo): each process
    labels half of the blocks and trains on half of every batch (batch 2 x 2 processes =
    the single process's batch 4); the student ends about where the single process does."""
    import os
    import subprocess
    import sys

    recipe = lm_recipe(tiny_llama, lm_text)
    one = run_recipe(parse_recipe(recipe), tmp_path / "one", cache_dir=tmp_path / "c1")
    recipe["stages"][0]["distill"]["batch_size"] = 2
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "29571", str(bin_dir / "slimformer"), "run",
        str(tmp_path / "r.yaml"), "--output", str(tmp_path / "two"),
        "--cache-dir", str(tmp_path / "c2"),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    # half of the blocks were labeled by each process: the main one reports its share
    blocks = one["stages"][0]["teacher_forward_examples"]
    assert two["stages"][0]["teacher_forward_examples"] in (blocks // 2, blocks - blocks // 2)
    assert abs(two["stages"][0]["steps"] - one["stages"][0]["steps"]) <= 1
    p1, p2 = one["student"]["metrics"]["perplexity"], two["student"]["metrics"]["perplexity"]
    assert abs(p1 - p2) / p1 < 0.05, (p1, p2)
