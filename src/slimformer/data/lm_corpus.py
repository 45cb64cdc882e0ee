"""Plain text for language modelling: files, folders or glob patterns read in order, and
token streams packed into fixed-length blocks (no padding, every token trains).

Files that are not UTF-8 (old Project Gutenberg books are Latin-1) are decoded as Latin-1, which
maps every byte, and the file is named in the log; CRLF line ends become LF.
"""

import glob
import logging
from pathlib import Path

import datasets
import numpy as np

from slimformer.errors import DataError

log = logging.getLogger("slimformer")
TEXT_SUFFIXES = (".txt", ".raw", ".tokens", ".text", ".md")


def corpus_files(sources: str | list[str]) -> list[Path]:
    """Every file named by ``sources`` (a file, a folder of text files, or a glob), in order."""
    files: list[Path] = []
    for source in [sources] if isinstance(sources, str) else sources:
        path = Path(source)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES)
        else:
            found = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(
                f"Text source {source!r} matches no file. Give a text file, a folder of "
                f"{'/'.join(TEXT_SUFFIXES)} files, or a glob such as 'books/*.txt'."
            )
        files += [f for f in found if f not in files]
    return files


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        log.warning("%s is not UTF-8 (line %d); decoding it as Latin-1", path, line)
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_lines(sources: str | list[str]) -> datasets.Dataset:
    """One row per line (line ends kept, so joined rows are the files' text), files in order."""
    lines: list[str] = []
    for path in corpus_files(sources):
        lines += read_text(path).splitlines(keepends=True)
    if not any(x.strip() for x in lines):
        raise DataError(f"Text source {sources!r} holds no text.")
    return datasets.Dataset.from_dict({"text": lines})


def token_stream(ds: datasets.Dataset, tokenizer, max_tokens: int | None = None) -> np.ndarray:
    """All tokens of ``ds`` in order (no special tokens), tokenized by ``datasets`` (cached)."""
    if max_tokens is not None:  # the first tokens only: tokenize just enough lines
        ds = ds.select(range(min(len(ds), _lines_for(ds, tokenizer, max_tokens))))
    tokenized = ds.map(
        lambda rows: tokenizer(rows["text"], add_special_tokens=False),
        batched=True,
        remove_columns=ds.column_names,
        desc="tokenizing",
    )
    stream = tokenized.data.column("input_ids").combine_chunks().values.to_numpy()
    return stream[:max_tokens] if max_tokens is not None else stream


def _lines_for(ds: datasets.Dataset, tokenizer, max_tokens: int) -> int:
    """How many leading lines hold ``max_tokens`` tokens (grows the guess until they do)."""
    n = 256
    while n < len(ds):
        count = sum(
            len(t) for t in tokenizer(ds["text"][:n], add_special_tokens=False)["input_ids"]
        )
        if count >= max_tokens:
            return n
        n *= 2
    return len(ds)


def pack_blocks(stream: np.ndarray, block_size: int, name: str) -> datasets.Dataset:
    """Consecutive ``block_size``-token blocks (the tail shorter than a block is dropped)."""
    n = len(stream) // block_size
    if n == 0:
        raise DataError(
            f"The {name} text has {len(stream)} tokens, fewer than one block of {block_size}. "
            f"Give more text or a smaller data.max_length / data.eval_block_size."
        )
    blocks = stream[: n * block_size].reshape(n, block_size).astype(np.int64)
    return datasets.Dataset.from_dict(
        {
            "input_ids": blocks.tolist(),
            "attention_mask": np.ones_like(blocks).tolist(),
            "idx": list(range(n)),
        }
    )
