"""Replacement candidates from the teacher's input embeddings: the K whole-word vocabulary
tokens nearest (cosine) to a word that is itself one token. No extra model needed; words that
split into several pieces are left as they are."""

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase


def whole_word_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
    """Vocabulary ids that are a complete alphabetic word on their own -> that word."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    words = [tokenizer.decode([i]).strip() for i in ids]
    encoded = tokenizer(words, add_special_tokens=False)["input_ids"]
    return {
        i: w for i, w, enc in zip(ids, words, encoded, strict=True) if w.isalpha() and enc == [i]
    }


class EmbeddingNeighbours:
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, embeddings: torch.Tensor, k: int
    ) -> None:
        """``embeddings``: the teacher's input word-embedding matrix (vocab, hidden)."""
        self.tokenizer = tokenizer
        self.k = k
        vocab = whole_word_tokens(tokenizer)
        self.ids = np.array(sorted(vocab))
        self.words = [vocab[i] for i in self.ids]
        emb = embeddings.detach().float()[torch.as_tensor(self.ids)]
        self.unit = torch.nn.functional.normalize(emb, dim=-1)
        self.row = {int(i): r for r, i in enumerate(self.ids)}
        self._cache: dict[str, list[str]] = {}

    def prepare(self, words: set[str]) -> None:
        """Neighbours of many words in one batched pass (a matmul per chunk)."""
        todo = [w for w in words if w not in self._cache]
        if not todo:
            return
        encoded = self.tokenizer(todo, add_special_tokens=False)["input_ids"]
        rows = [
            (w, self.row.get(enc[0]) if len(enc) == 1 else None)
            for w, enc in zip(todo, encoded, strict=True)
        ]
        for w, r in rows:
            if r is None:  # several pieces, or not a whole word: left unchanged
                self._cache[w] = []
        known = [(w, r) for w, r in rows if r is not None]
        for start in range(0, len(known), 1024):
            chunk = known[start : start + 1024]
            sims = self.unit[[r for _, r in chunk]] @ self.unit.T
            sims[torch.arange(len(chunk)), [r for _, r in chunk]] = -2.0  # never the word itself
            top = sims.topk(min(self.k, len(self.ids) - 1), dim=-1).indices.numpy()
            for (w, _), idx in zip(chunk, top, strict=True):
                self._cache[w] = [self.words[j] for j in idx]

    def candidates(self, word: str) -> list[str]:
        if word not in self._cache:
            self.prepare({word})
        return self._cache[word]
