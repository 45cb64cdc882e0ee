"""Token classification (NER): one tag distribution per token.

Words are split into sub-tokens; the word's tag sits on its first sub-token (``data.subtokens:
all`` puts it on every sub-token for the loss). Three per-token columns ride with each row:
``labels`` (loss targets, -100 where none), ``kd_mask`` (where the KD loss applies: the labeled
sub-tokens, never padding or special tokens) and ``word_start`` (what the entity metric reads).
Outputs are packed per example to ``max_length`` x tags, so the teacher cache and predictions
keep one fixed-width row per sentence.
"""

import datasets
import numpy as np
import torch
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

from slimformer.data.config import TRAIN_REST, DataConfig
from slimformer.data.conll import CONLL_SUFFIXES, read_conll
from slimformer.data.readers import read_table, read_unlabeled, require_columns
from slimformer.errors import DataError, ModelError
from slimformer.models.crf import has_crf
from slimformer.tasks.base import TASKS, Aligned, Task, model_inputs
from slimformer.tasks.metrics import entity_metrics
from slimformer.tasks.sequence_classification import label_mapper, subsample, train_rest

PER_TOKEN = ("labels", "kd_mask", "word_start")
LOG_FLOOR = -30.0  # log-probabilities below this are treated as exactly impossible
SENTENCE_ENDS = frozenset({".", "!", "?"})


def sentences(line: str) -> list[list[str]]:
    """A line of space-separated words (CoNLL-style tokenisation) cut into sentences after
    ``.``, ``!`` and ``?``, so a paragraph becomes rows the size of the training sentences."""
    out, current = [], []
    for word in line.split():
        current.append(word)
        if word in SENTENCE_ENDS:
            out.append(current)
            current = []
    return out + ([current] if current else [])


def as_words(value) -> list[str]:
    """A row's words: a token list as it is, a string split on whitespace."""
    return [str(w) for w in value] if isinstance(value, list) else str(value).split()


def is_conll(source: str, fmt: str) -> bool:
    from pathlib import Path

    suffix = Path(source).suffix.lower()
    return fmt == "conll" or (fmt == "auto" and suffix in CONLL_SUFFIXES + (".txt",))


class TokenCollator:
    """Pads inputs with the tokenizer and the per-token columns with -100 / 0."""

    def __init__(self, tokenizer) -> None:
        self.inner = DataCollatorForTokenClassification(tokenizer)

    def __call__(self, rows: list[dict]) -> dict:
        extra = {k: [r.pop(k) for r in rows] for k in ("kd_mask", "word_start") if k in rows[0]}
        batch = dict(self.inner(rows))
        length = batch["input_ids"].shape[1]
        for key, values in extra.items():
            padded = torch.zeros(len(values), length, dtype=torch.long)
            for i, v in enumerate(values):
                padded[i, : len(v)] = torch.as_tensor(v)
            batch[key] = padded
        return batch


def words(x: torch.Tensor, word_start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (B, L, D) -> per-word (B, W, D), left-aligned, with its (B, W) mask."""
    starts = word_start.bool()
    counts = starts.sum(1)
    out = x.new_zeros(x.shape[0], max(int(counts.max()), 1), x.shape[-1])
    mask = torch.zeros(out.shape[:2], dtype=torch.bool, device=x.device)
    for row in range(x.shape[0]):
        n = int(counts[row])
        out[row, :n] = x[row][starts[row]]
        mask[row, :n] = True
    return out, mask


@TASKS.register("token-classification")
class TokenClassification(Task):
    name = "token-classification"
    primary_metric = "f1"
    auto_class = AutoModelForTokenClassification

    def __init__(self) -> None:
        self.width: int | None = None  # max_length: packed row = width x num_labels
        self.id2label: dict[int, str] = {}
        self.strict = False

    def _read(self, source: str, data: DataConfig, split: str) -> datasets.Dataset:
        if is_conll(source, data.format):
            return read_conll(source, data.tag_column, data.text_column, data.label_column)
        ds = read_table(source, fmt=data.format, split=split)
        require_columns(ds, [data.text_column, data.label_column], source)
        feature = ds.features[data.label_column]
        names = getattr(getattr(feature, "feature", None), "names", None)
        if names:  # a hub ClassLabel sequence: ids -> tag names
            ds = ds.map(
                lambda rows: {
                    data.label_column: [
                        [names[t] for t in tags] for tags in rows[data.label_column]
                    ]
                },
                batched=True,
            )
        return ds

    def raw_splits(self, data: DataConfig, seed: int):
        train = self._read(data.train, data, data.train_split)
        if data.eval:
            evl = self._read(data.eval, data, data.eval_split)
        else:
            parts = train.train_test_split(test_size=0.1, seed=seed)
            train, evl = parts["train"], parts["test"]
        return (
            subsample(train, data.max_train_examples, seed),
            subsample(evl, data.max_eval_examples, seed),
        )

    def prepare(self, ds, tokenizer, data: DataConfig, model_config, split: str):
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                "Token classification needs a fast tokenizer (word ids for sub-token alignment); "
                f"{type(tokenizer).__name__} is not one."
            )
        self._bind(data, model_config)
        to_id = label_mapper(model_config, f"the {split} data")
        for tag in {t for tags in ds[data.label_column] for t in tags}:
            to_id(tag)  # every tag known, checked before tokenizing
        return self._encode(ds, tokenizer, data, to_id, "tokenizing")

    def raw_unlabeled(self, data: DataConfig, seed: int) -> datasets.Dataset:
        """Untagged sentences for token-level data distillation (``data.unlabeled``), their
        words in ``data.text_column``: a plain-text file (one sentence or paragraph a line,
        words separated by spaces as in CoNLL; paragraphs are cut into sentences), a table with
        a token-list or text column, or ``train-rest``: the training sentences left out by
        ``data.max_train_examples``."""
        cfg = data.unlabeled
        if cfg.source == TRAIN_REST:
            rest = train_rest(data, seed, lambda: self._read(data.train, data, data.train_split))
            return subsample(rest.select_columns([data.text_column]), cfg.max_examples, seed)
        ds = read_unlabeled(cfg.source, cfg.text_column)
        require_columns(ds, [cfg.text_column], cfg.source)
        column = cfg.text_column

        def split(rows):
            out = []
            for value in rows[column]:
                out.extend([as_words(value)] if isinstance(value, list) else sentences(str(value)))
            return {data.text_column: [s for s in out if s]}

        ds = ds.map(split, batched=True, remove_columns=ds.column_names, desc="sentences")
        if len(ds) == 0:
            raise DataError(f"data.unlabeled: {cfg.source} has no words to tag.")
        return subsample(ds, cfg.max_examples, seed)

    def prepare_unlabeled(self, ds, tokenizer, data: DataConfig, model_config):
        """Tokenized like training data with every tag -100: the teacher's per-token soft
        labels are the only target (first sub-tokens, or all with ``data.subtokens: all``).
        Rows may hold token lists or space-separated strings (augmented copies)."""
        self._bind(data, model_config)
        return self._encode(ds, tokenizer, data, None, "tokenizing unlabeled")

    def _bind(self, data: DataConfig, model_config) -> None:
        """The packed-row width and tag names that ``pack`` / ``metrics`` read."""
        self.width = data.max_length
        self.id2label = {int(k): v for k, v in model_config.id2label.items()}

    def _encode(self, ds, tokenizer, data: DataConfig, to_id, desc: str) -> datasets.Dataset:
        """Words -> sub-tokens with the per-token columns; ``to_id`` None = untagged rows."""
        every = data.subtokens == "all"

        def encode(rows):
            texts = [as_words(v) for v in rows[data.text_column]]
            enc = tokenizer(
                texts, is_split_into_words=True, truncation=True, max_length=data.max_length
            )
            tagged = rows[data.label_column] if to_id is not None else [None] * len(texts)
            labels, kd_mask, word_start = [], [], []
            for i, tags in enumerate(tagged):
                lab, mask, start, previous = [], [], [], None
                for w in enc.word_ids(i):
                    first = w is not None and w != previous
                    use = first or (w is not None and every)
                    lab.append(to_id(tags[w]) if use and tags is not None else -100)
                    mask.append(int(use))
                    start.append(int(first))
                    previous = w
                labels.append(lab)
                kd_mask.append(mask)
                word_start.append(start)
            return {**enc, "labels": labels, "kd_mask": kd_mask, "word_start": word_start}

        ds = ds.map(encode, batched=True, remove_columns=ds.column_names, desc=desc)
        return ds.add_column("idx", list(range(len(ds))))

    def forward(self, model, batch) -> Aligned:
        logits = model(**model_inputs(batch)).logits  # (B, L, C)
        mask = batch["kd_mask"] if "kd_mask" in batch else batch["attention_mask"]
        return Aligned(logits.reshape(-1, logits.shape[-1]), mask.reshape(-1).bool())

    def hard_targets(self, batch: dict) -> torch.Tensor | None:
        labels = batch.get("labels")
        return None if labels is None else labels.reshape(-1)

    def collator(self, tokenizer):
        return TokenCollator(tokenizer)

    def hard_loss(self, model, out: Aligned, batch: dict, hard_fn):
        """With a CRF: its negative log-likelihood per word (over first sub-tokens)."""
        model = getattr(model, "module", model)  # DDP wraps the model
        if not has_crf(model) or "labels" not in batch:
            return super().hard_loss(model, out, batch, hard_fn)
        b, length = batch["input_ids"].shape
        emissions, mask = words(out.values.reshape(b, length, -1), batch["word_start"])
        tags, _ = words(batch["labels"][..., None], batch["word_start"])
        tags = tags[..., 0]
        tagged = ((tags >= 0) & mask).any(1)  # untagged rows (teacher-labeled only) sit out
        nll = -model.crf.log_likelihood(emissions, tags, mask) * tagged
        return nll.sum() / mask[tagged].sum().clamp(min=1)

    def posterior_values(
        self, model, out: Aligned, batch: dict, temperature: float
    ) -> torch.Tensor:
        """With a CRF student: at every word start, the CRF's log-marginals
        at ``temperature`` (posterior distillation), scaled by it so that the soft loss's
        ``log_softmax(values / T)`` gives them back; other positions keep the emission scores."""
        model = getattr(model, "module", model)
        if not has_crf(model) or "word_start" not in batch:
            return out.values
        b, length = batch["input_ids"].shape
        grid = out.values.reshape(b, length, -1)
        emissions, mask = words(grid, batch["word_start"])
        # floored: a forbidden tag (I-X first) has log p ~ -1e4 / T, which would swamp the
        # logged loss wherever the teacher gives it a trace of mass (its gradient is nil anyway)
        marginals = model.crf.log_marginals(emissions, mask, temperature).clamp(min=LOG_FLOOR)
        grid = grid.float().clone()
        grid[batch["word_start"].bool()] = marginals[mask] * temperature  # row-major both sides
        return grid.reshape(b * length, -1)

    def predict_values(self, model, batch: dict) -> torch.Tensor:
        """With a CRF: the Viterbi path (always valid IOB2) wins the argmax at word starts."""
        values = self.forward(model, batch).values
        if not has_crf(model) or "word_start" not in batch:
            return values
        b, length = batch["input_ids"].shape
        grid = values.reshape(b, length, -1).clone()
        emissions, mask = words(grid, batch["word_start"])
        for row, path in enumerate(model.crf.decode(emissions, mask)):
            where = batch["word_start"][row].nonzero()[:, 0][: len(path)]
            grid[row, where, torch.as_tensor(path, device=grid.device)] += 1e4
        return grid.reshape(b * length, -1)

    def _shape(self) -> tuple[int, int]:
        if self.width is None or not self.id2label:
            raise DataError("token-classification: prepare() must run before outputs are packed")
        return self.width, len(self.id2label)

    @property
    def classes_per_position(self) -> int | None:
        return len(self.id2label) or None

    def pack(self, values: torch.Tensor, batch: dict) -> torch.Tensor:
        width, tags = self._shape()
        b, length = batch["input_ids"].shape
        out = values.new_zeros(b, width, tags)
        out[:, :length] = values.reshape(b, length, tags)
        return out.reshape(b, width * tags)

    def unpack(self, rows: torch.Tensor, batch: dict) -> torch.Tensor:
        width, tags = self._shape()
        b, length = batch["input_ids"].shape
        return rows.reshape(b, width, tags)[:, :length].reshape(b * length, tags)

    def metrics(self, values: np.ndarray, labels, reference) -> dict[str, float]:
        width, tags = self._shape()
        predicted = values.reshape(len(values), width, tags).argmax(-1)
        out = {}
        if labels is not None:
            out = entity_metrics(
                predicted[:, : labels.shape[1]], labels, self.id2label, self.strict
            )
        if reference is not None and labels is not None:
            ref = reference.reshape(len(reference), width, tags).argmax(-1)[:, : labels.shape[1]]
            real = labels >= 0
            cut = predicted[:, : labels.shape[1]]
            out["teacher_agreement"] = float((cut[real] == ref[real]).mean())
        return out
