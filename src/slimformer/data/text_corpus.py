"""Unlabeled text as a Dataset of sentences: plain text files, or the English prose that every
Python install ships, so the quickstart needs no download:

- ``stdlib:pydoc_data.topics``: the language reference topics (~2k sentences);
- ``stdlib:docstrings``: docstrings of the standard library, read with ``ast`` (never imported);
- ``stdlib:python-docs``: both (~18k sentences).
"""

import ast
import random
import re
import sysconfig
from pathlib import Path

import datasets

from slimformer.data.readers import check_utf8
from slimformer.errors import DataError

STDLIB_TOPICS = "stdlib:pydoc_data.topics"
STDLIB_DOCSTRINGS = "stdlib:docstrings"
STDLIB_ALL = "stdlib:python-docs"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def split_sentences(text: str, min_words: int = 5, max_words: int = 60) -> list[str]:
    """Cheap sentence splitter: good enough for English prose and documentation."""
    text = re.sub(r"\s+", " ", text)
    out = []
    for s in _SENTENCE_END.split(text):
        n = len(s.split())
        if min_words <= n <= max_words and sum(c.isalpha() for c in s) > 0.6 * len(s):
            out.append(s.strip())
    return out


def stdlib_topic_paragraphs() -> list[str]:
    """Paragraphs of the Python reference topics in order (code blocks dropped)."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if para.startswith((" ", "\t", ">>>")):
                continue  # indented blocks are code or grammar, not prose
            paragraphs.append(para)
    return paragraphs


def stdlib_docstring_paragraphs() -> list[str]:
    """Prose paragraphs of standard-library docstrings, parsed from source (tests excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paragraphs = []
    for path in sorted(root.rglob("*.py")):
        if {"test", "tests", "site-packages", "idlelib"} & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(
                node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ) and (doc := ast.get_docstring(node)):
                paragraphs += [
                    p for p in re.split(r"\n\s*\n", doc) if not p.startswith((" ", "\t", ">>>"))
                ]
    return paragraphs


def corpus_sentences(source: str) -> list[str]:
    """Sentences of a corpus, in document order (neighbours are related: used for eval pairs)."""
    if source == STDLIB_TOPICS:
        paragraphs = stdlib_topic_paragraphs()
    elif source == STDLIB_DOCSTRINGS:
        paragraphs = stdlib_docstring_paragraphs()
    elif source == STDLIB_ALL:
        paragraphs = stdlib_topic_paragraphs() + stdlib_docstring_paragraphs()
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(
                f"Text corpus {source!r} does not exist. Give a plain-text file or "
                f"one of {STDLIB_TOPICS!r}, {STDLIB_DOCSTRINGS!r}, {STDLIB_ALL!r}."
            )
        check_utf8(path)
        paragraphs = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
    sentences = [s for p in paragraphs for s in split_sentences(p)]
    if not sentences:
        raise DataError(f"Text corpus {source!r} yielded no sentences of 5-60 words.")
    return sentences


def sentence_splits(
    source: str, eval_pairs: int, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Train sentences and held-out sentence pairs (neighbours and random pairs, half each).

    Held-out sentences never appear in training, so fidelity measures generalisation.
    """
    sentences = corpus_sentences(source)
    rng = random.Random(seed)
    n_held = min(len(sentences) // 4, 2 * eval_pairs)
    start = rng.randrange(0, len(sentences) - n_held + 1)
    held = sentences[start : start + n_held]
    train = sentences[:start] + sentences[start + n_held :]
    pairs = [(held[i], held[i + 1]) for i in range(0, n_held - 1, 2)][: eval_pairs // 2]
    while len(pairs) < eval_pairs:
        a, b = rng.sample(held, 2)
        pairs.append((a, b))
    eval_ds = datasets.Dataset.from_dict(
        {"text": [a for a, _ in pairs], "text_pair": [b for _, b in pairs]}
    )
    return datasets.Dataset.from_dict({"text": train}), eval_ds
