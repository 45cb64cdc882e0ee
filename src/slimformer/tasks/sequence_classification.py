"""Sentence (or sentence-pair) classification and regression: one output vector per sequence."""

import datasets
import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from slimformer.data.config import TRAIN_REST, DataConfig
from slimformer.data.readers import read_table, read_unlabeled, require_columns
from slimformer.errors import DataError
from slimformer.tasks.base import TASKS, Aligned, Task, model_inputs, tokenize
from slimformer.tasks.metrics import classification_metrics, regression_metrics


def is_regression(model_config) -> bool:
    return model_config.problem_type == "regression" or model_config.num_labels == 1


def label_mapper(model_config, source: str):
    """Map data labels (names or ids) to the model's ids, or fail naming the unknown label."""
    id2label = {int(k): v for k, v in model_config.id2label.items()}
    name2id = {str(v): k for k, v in id2label.items()}
    known = ", ".join(f"{k}={v}" for k, v in sorted(id2label.items()))

    def to_id(value) -> int:
        text = str(value).strip()
        if text in name2id:
            return name2id[text]
        try:
            as_int = int(float(text))
        except ValueError:
            as_int = None
        if as_int is not None and as_int in id2label and float(text) == as_int:
            return as_int
        raise DataError(
            f"Label {value!r} in {source} is not one the teacher knows ({known}). "
            f"Fix the data, set data.label_column, or use a teacher trained on "
            f"these labels."
        )

    return to_id


def subsample(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def train_rest(data: DataConfig, seed: int, read_train) -> datasets.Dataset:
    """``data.unlabeled.source: train-rest``: the training rows ``subsample`` leaves out of the
    labeled share (same seeded shuffle, so the two never overlap). The settings are checked
    before ``read_train()`` reads the file."""
    if data.eval is None:
        raise DataError(
            f"data.unlabeled.source '{TRAIN_REST}' needs a separate data.eval: with the "
            f"eval set held out of data.train, the rest of the file would overlap it."
        )
    if data.max_train_examples is None:
        raise DataError(
            f"data.unlabeled.source '{TRAIN_REST}' means the training rows not used as "
            f"labeled examples, so set data.max_train_examples (e.g. 5000)."
        )
    full = read_train()
    return full.shuffle(seed=seed).select(range(data.max_train_examples, len(full)))


@TASKS.register("sequence-classification")
class SequenceClassification(Task):
    name = "sequence-classification"
    primary_metric = "accuracy"
    auto_class = AutoModelForSequenceClassification

    def raw_splits(self, data: DataConfig, seed: int):
        kw = dict(fmt=data.format, header=data.header, column_names=data.column_names)
        train = read_table(data.train, split=data.train_split, **kw)
        columns = [data.text_column, data.label_column] + (
            [data.text_pair_column] if data.text_pair_column else []
        )
        require_columns(train, columns, data.train)
        if data.eval:
            evl = read_table(data.eval, split=data.eval_split, **kw)
            require_columns(evl, columns, data.eval)
        else:  # hold out 10% of train, seeded, so the eval set never overlaps training
            parts = train.train_test_split(test_size=0.1, seed=seed)
            train, evl = parts["train"], parts["test"]
        return (
            subsample(train, data.max_train_examples, seed),
            subsample(evl, data.max_eval_examples, seed),
        )

    def raw_unlabeled(self, data: DataConfig, seed: int) -> datasets.Dataset:
        """The unlabeled text (``data.unlabeled``), with its text in ``data.text_column``."""
        cfg = data.unlabeled
        if data.text_pair_column and cfg.source != TRAIN_REST:
            raise DataError(
                f"data.unlabeled ({cfg.source}) holds single texts, but this task reads text "
                f"pairs (data.text_pair_column: {data.text_pair_column}); use "
                f"source: {TRAIN_REST} or an augment block for more pairs."
            )
        if cfg.source == TRAIN_REST:
            kw = dict(fmt=data.format, header=data.header, column_names=data.column_names)
            rest = train_rest(
                data, seed, lambda: read_table(data.train, split=data.train_split, **kw)
            )
            ds, column = rest, data.text_column
        else:
            ds, column = read_unlabeled(cfg.source, cfg.text_column), cfg.text_column
        require_columns(ds, [column], cfg.source)
        if column != data.text_column:
            ds = ds.rename_column(column, data.text_column)
        return subsample(ds, cfg.max_examples, seed)

    def prepare_unlabeled(self, ds, tokenizer, data: DataConfig, model_config):
        """Tokenized like training data, without a gold label (soft labels only): label -100
        for classes, NaN for a regression score."""
        missing = float("nan") if is_regression(model_config) else -100
        ds = ds.map(
            lambda rows: {"labels": [missing] * len(rows[data.text_column])},
            batched=True,
            desc="unlabeled",
        )
        pair = data.text_pair_column if data.text_pair_column in ds.column_names else None
        return tokenize(ds, tokenizer, data.text_column, pair, data.max_length, keep=["labels"])

    def prepare(
        self, ds, tokenizer: PreTrainedTokenizerBase, data: DataConfig, model_config, split: str
    ):
        if is_regression(model_config):

            def to_label(rows):
                return {"labels": [float(v) for v in rows[data.label_column]]}
        else:
            to_id = label_mapper(model_config, f"the {split} data")
            # Check every label up front: a bad one should fail before tokenization/training.
            for value in set(ds[data.label_column]):
                to_id(value)

            def to_label(rows):
                return {"labels": [to_id(v) for v in rows[data.label_column]]}

        ds = ds.map(to_label, batched=True, desc="labels")
        return tokenize(
            ds, tokenizer, data.text_column, data.text_pair_column, data.max_length, keep=["labels"]
        )

    def forward(self, model, batch) -> Aligned:
        logits = model(**model_inputs(batch)).logits  # (B, C)
        return Aligned(logits, torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device))

    def metrics(self, values: np.ndarray, labels, reference) -> dict[str, float]:
        regression = values.shape[-1] == 1
        out = {}
        if labels is not None:
            out = (
                regression_metrics(values[:, 0], labels)
                if regression
                else classification_metrics(values.argmax(-1), labels)
            )
        if reference is not None and not regression:
            out["teacher_agreement"] = float((values.argmax(-1) == reference.argmax(-1)).mean())
        return out
