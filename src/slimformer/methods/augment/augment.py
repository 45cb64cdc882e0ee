"""N augmented copies of each sentence, seeded per (seed, example, copy), so the same recipe
always yields the same data (and the teacher's labels for it come from the cache next time)."""

import numpy as np
from tqdm.auto import tqdm

from slimformer.methods.augment.config import AugmentConfig
from slimformer.methods.augment.mlm import MaskedLMCandidates
from slimformer.methods.augment.neighbours import EmbeddingNeighbours

_MLM_BATCH = 32


def _rng(seed: int, example: int, copy: int) -> np.random.Generator:
    return np.random.default_rng([seed, example, copy])


def _edit(words: list[str], cfg: AugmentConfig, rng: np.random.Generator, mask_token: str):
    """Masking and deletion (word by word), then replacement positions; returns
    (words, positions to replace)."""
    out, replace_at = [], []
    for w in words:
        r = rng.random(3)
        if r[0] < cfg.delete:
            continue
        if r[1] < cfg.mask:
            out.append(mask_token)
            continue
        if r[2] < cfg.replace and w.isalpha():
            replace_at.append(len(out))
        out.append(w)
    if not out:  # deletion took every word: keep one
        out = [words[int(rng.integers(len(words)))]]
        replace_at = []
    return out, replace_at


def _ngram(words: list[str], rng: np.random.Generator, chance: float) -> list[str]:
    if rng.random() >= chance or len(words) < 2:
        return words
    n = int(rng.integers(1, min(5, len(words)) + 1))
    start = int(rng.integers(0, len(words) - n + 1))
    return words[start : start + n]


def augment_texts(
    texts: list[str],
    cfg: AugmentConfig,
    mask_token: str,
    neighbours: EmbeddingNeighbours | None = None,
    mlm: MaskedLMCandidates | None = None,
) -> list[tuple[int, str]]:
    """``(source example index, new text)`` for every copy of every text, in order."""
    plans = []  # (example, words, replace positions, rng)
    for i, text in enumerate(texts):
        words = str(text).split()
        if not words:
            continue
        for c in range(cfg.copies):
            rng = _rng(cfg.seed, i, c)
            edited, at = _edit(words, cfg, rng, mask_token)
            plans.append((i, edited, at, rng))
    if neighbours is not None:
        neighbours.prepare({p[1][j] for p in plans for j in p[2]})
    out = []
    bar = tqdm(total=len(plans), desc="augmenting", unit="copy", dynamic_ncols=True)
    for start in range(0, len(plans), _MLM_BATCH):
        chunk = plans[start : start + _MLM_BATCH]
        if mlm is not None:
            with_masks = [p for p in chunk if p[2]]
            filled = iter(mlm.fill([p[1] for p in with_masks], [p[2] for p in with_masks]))
            candidates = [next(filled) if p[2] else [] for p in chunk]
        else:
            candidates = [[neighbours.candidates(p[1][j]) for j in p[2]] for p in chunk]
        for (i, words, at, rng), cands in zip(chunk, candidates, strict=True):
            words = list(words)
            for j, options in zip(at, cands, strict=True):
                if options:
                    words[j] = options[int(rng.integers(len(options)))]
            out.append((i, " ".join(_ngram(words, rng, cfg.ngram))))
        bar.update(len(chunk))
    bar.close()
    return out
