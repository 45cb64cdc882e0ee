"""The recipe's ``data:`` section."""

from typing import Literal

from pydantic import Field

from slimformer.config import StrictConfig
from slimformer.data.readers import Format

TRAIN_REST = "train-rest"


class UnlabeledConfig(StrictConfig):
    """Text without labels for data distillation: the teacher labels it (soft labels only)."""

    source: str = Field(
        description=f"file, hub id, plain-text file (one example a line), or '{TRAIN_REST}': "
        "the training rows left out by max_train_examples"
    )
    text_column: str = "text"
    max_examples: int | None = Field(None, gt=0)


class DataConfig(StrictConfig):
    train: str | list[str] = Field(
        description="file, hub dataset id, or corpus (embedding task); causal-lm: text files, "
        "folders or globs (a list)"
    )
    eval: str | None = Field(None, description="file or hub id; None = hold out from train")
    format: Format | str = "auto"
    train_split: str = "train"
    eval_split: str = "validation"
    header: bool = True
    column_names: list[str] | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    tag_column: int = Field(
        -1, description="token classification, CoNLL files: the column holding the tags"
    )
    subtokens: Literal["first", "all"] = Field(
        "first",
        description="token classification: the word's label (and the KD loss) on its first "
        "sub-token only, or on all of them (the metric always reads the first)",
    )
    max_length: int = Field(128, gt=0, le=8192)
    max_train_examples: int | None = Field(None, gt=0)
    max_eval_examples: int | None = Field(None, gt=0)
    eval_pairs: int = Field(1000, gt=1, description="held-out sentence pairs (embedding task)")
    prompt_column: str = Field("prompt", description="causal-lm prompt/response data")
    response_column: str = Field("response", description="causal-lm prompt/response data")
    chat_template: bool = Field(
        True, description="causal-lm: wrap prompts in the tokenizer's chat template"
    )
    eval_block_size: int | None = Field(
        None, gt=1, description="causal-lm: perplexity window in tokens (default max_length)"
    )
    eval_max_tokens: int | None = Field(
        None, gt=1, description="causal-lm: perplexity on the first N tokens of data.eval"
    )
    unlabeled: UnlabeledConfig | None = None
