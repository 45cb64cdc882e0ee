"""End to end on a tiny teacher and a slice of real SST-2: run folder, report shape, loading
with transformers, the teacher cache across runs, and --resume after an interruption."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline

from slimformer.pipeline.recipe import parse_recipe
from slimformer.pipeline.runner import run_recipe, work_dir_of
from tests.conftest import sst2_recipe, train_crashing_after

REPORT_KEYS = {"metrics", "params", "size_mb", "latency_ms"}


def run(tree, out, cache_dir, **kw):
    return run_recipe(parse_recipe(tree), out, cache_dir=str(cache_dir), **kw)


def test_run_folder_report_and_transformers_loading(tiny_teacher, sst2_slice, tmp_path, cache_dir):
    out = tmp_path / "run"
    report = run(sst2_recipe(tiny_teacher, sst2_slice), out, cache_dir)
    assert (out / "recipe.yaml").exists() and (out / "logs").is_dir()
    assert json.loads((out / "report.json").read_text()) == report
    for who in ("teacher", "student"):
        assert REPORT_KEYS <= set(report[who])
        assert {"accuracy", "macro_f1", "mcc"} <= set(report[who]["metrics"])
        assert set(report[who]["latency_ms"]) == {"bs1", "bs4"}
    assert set(report["speedup"]) == {"bs1", "bs4"}
    assert report["student"]["init"]["teacher_layers"] == [0, 3]
    assert report["student"]["params"] < report["teacher"]["params"]
    assert not work_dir_of(out).exists()

    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 2
    clf = pipeline("text-classification", model=str(out / "model"), device="cpu")
    assert clf("a great movie")[0]["label"] in {"negative", "positive"}


def test_second_run_never_runs_the_teacher(tiny_teacher, sst2_slice, tmp_path, cache_dir):
    first = run(sst2_recipe(tiny_teacher, sst2_slice), tmp_path / "a", cache_dir)
    assert first["stages"][0]["teacher_forward_examples"] == 256
    second = run(sst2_recipe(tiny_teacher, sst2_slice), tmp_path / "b", cache_dir)
    assert second["stages"][0]["teacher_forward_examples"] == 0
    assert second["stages"][0]["cached_examples"] == 256
    assert second["student"]["metrics"] == first["student"]["metrics"]


def test_resume_after_interruption_matches_uninterrupted(
    tiny_teacher, sst2_slice, tmp_path, cache_dir, monkeypatch
):
    # 16 batches an epoch: the crash lands in epoch 2, mid-epoch, after an evaluation
    tree = sst2_recipe(tiny_teacher, sst2_slice, epochs=2, save_every=5, eval_every=4)
    straight = run(tree, tmp_path / "straight", cache_dir)

    import slimformer.train.loop as loop

    real_train = loop.train
    crash_after_23_steps = train_crashing_after(23)

    import slimformer.pipeline.stages as stages

    monkeypatch.setattr(stages, "train", crash_after_23_steps)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(tree, out, cache_dir)
    assert work_dir_of(out).exists() and not out.exists()
    monkeypatch.setattr(stages, "train", real_train)
    resumed = run(tree, out, cache_dir, resume=True)
    assert resumed["stages"][0]["resumed_from_step"] == 20
    assert resumed["student"]["metrics"]["accuracy"] == pytest.approx(
        straight["student"]["metrics"]["accuracy"], abs=0.003
    )
    a = AutoModelForSequenceClassification.from_pretrained(tmp_path / "straight" / "model")
    b = AutoModelForSequenceClassification.from_pretrained(out / "model")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5), name


def test_finetune_from_backbone_then_distill(tiny_teacher, sst2_slice, tmp_path, cache_dir):
    from slimformer import api

    report = api.finetune(
        str(tiny_teacher),
        str(sst2_slice["train"]),
        tmp_path / "ft",
        eval=str(sst2_slice["dev"]),
        labels=["negative", "positive"],
        text_column="sentence",
        epochs=1,
        batch_size=32,
        cache_dir=str(cache_dir),
    )
    assert report["teacher"] is None and "accuracy" in report["student"]["metrics"]
    out = api.distill(
        str(tmp_path / "ft" / "model"),
        str(sst2_slice["train"]),
        tmp_path / "kd",
        eval=str(sst2_slice["dev"]),
        layers=1,
        text_column="sentence",
        epochs=1,
        cache_dir=str(cache_dir),
    )
    assert out["speedup"]["bs32"] > 0


def test_sentence_embedding_task_reports_fidelity(tmp_path, cache_dir):
    from tests.conftest import bundled_minilm

    tree = {
        "task": "sentence-embedding",
        "teacher": {"model": str(bundled_minilm())},
        "student": {"layers": 2},
        "data": {
            "train": "stdlib:pydoc_data.topics",
            "eval_pairs": 40,
            "max_train_examples": 64,
            "max_length": 32,
        },
        "stages": [
            {"distill": {"soft": "mse", "hard": None, "alpha": 1.0, "epochs": 1, "batch_size": 16}}
        ],
        "report": {"repeats": 1, "batch_sizes": [1], "seq_len": 8},
    }
    report = run(tree, tmp_path / "emb", cache_dir)
    assert 0 < report["fidelity"] <= 1 and report["teacher"]["metrics"]["fidelity"] == 1.0
    assert report["speedup"]["bs1"] > 0


def test_cli_eval_export_and_quantize(tiny_teacher, sst2_slice, tmp_path, capsys):
    from slimformer.cli import main

    data = ["--data", str(sst2_slice["dev"]), "--text-column", "sentence"]
    assert main(["eval", str(tiny_teacher), *data, "--teacher", str(tiny_teacher)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["metrics"] == out["teacher"]["metrics"]
    assert main(["export", str(tiny_teacher), *data, "--output", str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "model" / "model.onnx").exists()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "onnx" / "model"), *data]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["runtime"] == "onnxruntime"
    assert (
        main(
            [
                "quantize",
                str(tmp_path / "onnx" / "model"),
                *data,
                "--method",
                "static",
                "--calibration-examples",
                "32",
                "--output",
                str(tmp_path / "q"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["student"]["runtime"] == "onnxruntime" and report["teacher"] is None


def test_training_with_another_attention_kernel(
    tiny_teacher, sst2_slice, tmp_path, cache_dir, monkeypatch
):
    """``attn_implementation: eager`` is used while the student trains and the model gets its
    own kernel back; the saved folder does not carry the training choice."""
    from slimformer.train import loop

    seen = []
    original = loop._switch_attention

    def spy(model, implementation):
        restore = original(model, implementation)
        seen.append(model.config._attn_implementation)
        return lambda: (restore(), seen.append(model.config._attn_implementation))

    monkeypatch.setattr(loop, "_switch_attention", spy)
    run(
        sst2_recipe(tiny_teacher, sst2_slice, attn_implementation="eager"),
        tmp_path / "r",
        cache_dir,
    )
    assert seen == ["eager", "sdpa"]
    config = json.loads((tmp_path / "r" / "model" / "config.json").read_text())
    assert config.get("_attn_implementation", "sdpa") != "eager"


@pytest.mark.parametrize("fast", [True, False])
def test_training_draws_dropout_masks_as_the_fast_dropout_key_says(
    tiny_teacher, sst2_slice, tmp_path, cache_dir, monkeypatch, fast
):
    """``fast_dropout`` (default true) routes the student's dropout through slimformer's masks
    while it trains; torch's dropout is back afterwards."""
    import torch.nn.functional as F

    from slimformer.train import fast_dropout

    calls = []
    original = fast_dropout.dropout

    def spy(input, p=0.5, training=True, inplace=False):
        calls.append(training)
        return original(input, p, training, inplace)

    monkeypatch.setattr(fast_dropout, "dropout", spy)
    run(sst2_recipe(tiny_teacher, sst2_slice, fast_dropout=fast), tmp_path / "r", cache_dir)
    assert any(calls) == fast
    assert F.dropout is fast_dropout._torch_dropout
