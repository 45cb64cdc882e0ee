"""Causal language modelling: one next-token distribution per position.

Training text is packed into blocks of ``data.max_length`` tokens; perplexity is measured on the
first ``data.eval_max_tokens`` tokens of ``data.eval`` in non-overlapping windows of
``data.eval_block_size``. Position t's output predicts token t+1, so a block of L tokens gives
L-1 aligned positions. A ``labels`` column (prompt/response data) marks the positions that
train with -100; without it every real token trains.

Predictions are summarised per position as (gold-token NLL, argmax id): one fixed-width row per
block, small enough to keep the teacher's eval outputs on disk and to compare student and
teacher (perplexity, top-1 agreement) without holding vocabulary-sized tensors.
"""

import inspect
import math

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from slimformer.data.chat_pairs import encode_pairs, is_pair_source, read_pairs
from slimformer.data.config import DataConfig
from slimformer.data.lm_corpus import pack_blocks, read_lines, token_stream
from slimformer.errors import DataError
from slimformer.tasks.base import TASKS, Aligned, Task

PREDICT_CHUNK = 4  # rows per forward when predicting: vocab-sized logits stay ~100 MB


_LOGITS_TO_KEEP: dict[type, bool] = {}  # model class -> whether its forward takes it


def accepts_logits_to_keep(model) -> bool:
    """Whether the model (through DDP / PEFT wrappers) takes ``logits_to_keep``:
    recent ``transformers`` causal LMs do, and then the LM head runs only on the positions
    asked for, writing a contiguous tensor instead of a slice to copy."""
    core = model
    for _ in range(4):
        if hasattr(core, "get_base_model"):  # PEFT
            core = core.get_base_model()
        elif isinstance(getattr(core, "module", None), torch.nn.Module):  # DDP
            core = core.module
        else:
            break
    cls = type(core)
    if cls not in _LOGITS_TO_KEEP:
        forward = getattr(cls, "forward", None)
        try:
            _LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(forward).parameters
        except (TypeError, ValueError):
            _LOGITS_TO_KEEP[cls] = False
    return _LOGITS_TO_KEEP[cls]


def next_token_targets(batch: dict) -> torch.Tensor:
    """(B, L-1) token each position predicts, -100 where nothing trains (padding, prompts)."""
    labels = batch.get("labels")
    if labels is None:
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return labels[:, 1:]


def stack_blocks(rows: list[dict]) -> dict:
    """Blocks are equal-length: stacked as they are (no pad token needed; many LLM tokenizers
    have none)."""
    return {key: torch.tensor([r[key] for r in rows]) for key in rows[0]}


@TASKS.register("causal-lm")
class CausalLM(Task):
    name = "causal-lm"
    primary_metric = "perplexity"
    lower_is_better = ("perplexity", "nll")
    keeps_autocast_outputs = True  # the CE / KD terms normalise chunk by chunk in fp32
    auto_class = AutoModelForCausalLM

    def __init__(self) -> None:
        self.seed = 0

    def raw_splits(self, data: DataConfig, seed: int):
        self.seed = seed
        train = self._read(data.train, data)
        if data.eval:
            return train, self._read(data.eval, data)
        cut = int(len(train) * 0.9)  # hold out the last 10% of lines: no overlap with training
        return train.select(range(cut)), train.select(range(cut, len(train)))

    @staticmethod
    def _read(source, data: DataConfig) -> datasets.Dataset:
        """Plain text (files, folders, globs) or a prompt/response table."""
        if is_pair_source(source):
            return read_pairs(source, data.prompt_column, data.response_column)
        return read_lines(source)

    def prepare(self, ds, tokenizer, data: DataConfig, model_config, split: str):
        if data.prompt_column in ds.column_names:  # prompt/response pairs: responses train
            pairs = encode_pairs(
                ds,
                tokenizer,
                data.prompt_column,
                data.response_column,
                data.max_length,
                data.chat_template,
            )
            if split != "eval" and data.max_train_examples:
                pairs = pairs.select(range(min(data.max_train_examples, len(pairs))))
            return pairs
        if split == "eval":
            block = data.eval_block_size or data.max_length
            stream = token_stream(ds, tokenizer, data.eval_max_tokens)
            if data.eval_max_tokens and len(stream) < data.eval_max_tokens:
                raise DataError(
                    f"data.eval has {len(stream)} tokens, fewer than data.eval_max_tokens "
                    f"({data.eval_max_tokens}). Lower it or give more text."
                )
            return pack_blocks(stream, block, "eval")
        blocks = pack_blocks(token_stream(ds, tokenizer), data.max_length, "training")
        n = data.max_train_examples
        if n is not None and n < len(blocks):  # a seeded sample of blocks from the whole corpus
            keep = np.sort(np.random.default_rng(self.seed).permutation(len(blocks))[:n])
            blocks = blocks.select(keep).remove_columns("idx")
            blocks = blocks.add_column("idx", list(range(n)))
        return blocks

    def collator(self, tokenizer):
        return stack_blocks

    def forward(self, model, batch) -> Aligned:
        kwargs = {"attention_mask": batch["attention_mask"]} if "attention_mask" in batch else {}
        length = batch["input_ids"].shape[1]
        if accepts_logits_to_keep(model):  # the head runs on the L-1 positions that predict
            keep = torch.arange(length - 1, device=batch["input_ids"].device)
            logits = model(input_ids=batch["input_ids"], logits_to_keep=keep, **kwargs).logits
        else:  # slicing a (B, L, V) tensor: the reshape below copies it
            logits = model(input_ids=batch["input_ids"], **kwargs).logits[:, :-1]  # (B, L-1, V)
        mask = next_token_targets(batch) != -100
        return Aligned(logits.reshape(-1, logits.shape[-1]), mask.reshape(-1))

    def hard_targets(self, batch: dict) -> torch.Tensor:
        return next_token_targets(batch).reshape(-1)

    @torch.inference_mode()
    def predict_values(self, model, batch: dict) -> torch.Tensor:
        """(B, 2 * (L-1)): per position the gold token's NLL (NaN where none) and the argmax."""
        rows = []
        for start in range(0, batch["input_ids"].shape[0], PREDICT_CHUNK):
            sub = {k: v[start : start + PREDICT_CHUNK] for k, v in batch.items() if k != "idx"}
            logits = self.forward(model, sub).values.float()
            targets = self.hard_targets(sub)
            nll = F.cross_entropy(logits, targets.clamp(min=0), reduction="none")
            nll = nll.masked_fill(targets < 0, float("nan"))
            pairs = torch.stack([nll, logits.argmax(-1).float()], -1)  # (n, 2)
            rows.append(pairs.reshape(sub["input_ids"].shape[0], -1))
        return torch.cat(rows)

    def teacher_row(self, model, batch: dict) -> torch.Tensor:
        return self.predict_values(model, batch)

    def metrics(self, values: np.ndarray, labels, reference) -> dict[str, float]:
        pairs = values.reshape(values.shape[0], -1, 2)
        nll, argmax = pairs[..., 0], pairs[..., 1]
        valid = ~np.isnan(nll)
        mean_nll = float(nll[valid].mean())
        out = {"perplexity": math.exp(mean_nll), "nll": mean_nll, "tokens": int(valid.sum())}
        if reference is not None:
            ref = reference.reshape(reference.shape[0], -1, 2)[..., 1]
            out["teacher_top1_agreement"] = float((argmax[valid] == ref[valid]).mean())
        return out


def non_embedding_params(model) -> int:
    """Parameters outside the token embeddings and an untied output head (how LLM sizes are
    compared: the vocabulary part does not shrink with depth or width)."""
    skip = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        skip.add(id(head.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
