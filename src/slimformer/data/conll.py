"""CoNLL-style token files: one token a line with its columns separated by whitespace, a blank
line between sentences, ``-DOCSTART-`` lines skipped. Every token line must have as many columns
as the first one; a line that does not is named in the error."""

from pathlib import Path

import datasets

from slimformer.data.readers import check_utf8
from slimformer.errors import DataError

CONLL_SUFFIXES = (".conll", ".conll03", ".iob", ".iob2", ".bio")


def read_conll(
    path: str | Path, tag_column: int = -1, tokens: str = "tokens", tags: str = "tags"
) -> datasets.Dataset:
    """Sentences as a dataset with list columns ``tokens`` and ``tags`` (tags from column
    ``tag_column`` of each line, the last by default)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CoNLL file {str(path)!r} does not exist.")
    check_utf8(path)
    sentences: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    labels: list[str] = []
    width = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                if words:
                    sentences.append((words, labels))
                    words, labels = [], []
                continue
            if parts[0] == "-DOCSTART-":
                continue
            if width is None:
                width = len(parts)
                if not -width <= tag_column < width:
                    raise DataError(
                        f"{path} line {lineno}: data.tag_column {tag_column} is out of range for "
                        f"{width} columns."
                    )
            if len(parts) != width:
                raise DataError(
                    f"{path} line {lineno} has {len(parts)} columns, the file's token lines have "
                    f"{width}: {line.strip()!r}. Fix the line (one token and its tags, separated "
                    f"by spaces)."
                )
            words.append(parts[0])
            labels.append(parts[tag_column])
    if words:
        sentences.append((words, labels))
    if not sentences:
        raise DataError(f"{path} has no sentences (token lines separated by blank lines).")
    return datasets.Dataset.from_dict(
        {tokens: [s[0] for s in sentences], tags: [s[1] for s in sentences]}
    )
