"""Prompt/response data for causal LMs: each pair becomes one sequence, the prompt wrapped in
the tokenizer's chat template (when it has one), and only the response tokens train.

Rows are padded to ``max_length`` (right padding, labels -100), so every row of a dataset has
the same number of positions: the teacher's top-k cache keeps fixed-size rows.
"""

import datasets

from slimformer.data.readers import read_table, require_columns
from slimformer.errors import DataError

PAIR_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def is_pair_source(source) -> bool:
    return isinstance(source, str) and source.lower().endswith(PAIR_SUFFIXES)


def read_pairs(source: str, prompt_column: str, response_column: str | None) -> datasets.Dataset:
    """A table of prompts (and responses); a clear error when a column is missing."""
    ds = read_table(source)
    require_columns(ds, [prompt_column] + ([response_column] if response_column else []), source)
    return ds


def prompt_text(tokenizer, prompt: str, chat_template: bool) -> str:
    """The prompt as the model sees it: inside the chat template, ready for the answer."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    return prompt


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise DataError("The tokenizer has neither a pad nor an EOS token to pad sequences with.")


def encode_pairs(
    ds: datasets.Dataset,
    tokenizer,
    prompt_column: str,
    response_column: str,
    max_length: int,
    chat_template: bool = True,
) -> datasets.Dataset:
    """input_ids / attention_mask / labels (-100 on prompt and padding), ``max_length`` each."""
    pad = pad_id(tokenizer)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(rows):
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for prompt, response in zip(rows[prompt_column], rows[response_column], strict=True):
            p = tokenizer(
                prompt_text(tokenizer, str(prompt), chat_template), add_special_tokens=False
            )["input_ids"]
            r = tokenizer(str(response), add_special_tokens=False)["input_ids"] + eos
            ids = (p + r)[:max_length]
            labels = ([-100] * len(p) + r)[:max_length]
            n = len(ids)
            out["input_ids"].append(ids + [pad] * (max_length - n))
            out["attention_mask"].append([1] * n + [0] * (max_length - n))
            out["labels"].append(labels + [-100] * (max_length - n))
        return out

    encoded = ds.map(encode, batched=True, remove_columns=ds.column_names, desc="chat pairs")
    trained = sum(1 for row in encoded["labels"] if any(x != -100 for x in row))
    if trained == 0:
        raise DataError(
            f"No response token fits in data.max_length ({max_length}) after the prompts: "
            f"raise max_length or shorten the prompts."
        )
    return encoded.add_column("idx", list(range(len(encoded))))
