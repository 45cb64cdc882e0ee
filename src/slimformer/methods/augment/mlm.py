"""Replacement candidates from a masked language model (TinyBERT DA): the chosen words are
masked together in one pass and the model's top K whole-word predictions at each mask are the
candidates. One pass per sentence copy instead of one per word keeps it affordable on a CPU."""

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from slimformer.methods.augment.neighbours import whole_word_tokens


class MaskedLMCandidates:
    def __init__(self, ref: str, k: int, trust_remote_code: bool = False) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
        if self.tokenizer.mask_token is None:
            raise ValueError(f"augment.mlm {ref!r} has no mask token; give a masked LM.")
        self.model = AutoModelForMaskedLM.from_pretrained(
            ref, trust_remote_code=trust_remote_code
        ).eval()
        self.k = k
        vocab = whole_word_tokens(self.tokenizer)
        allowed = torch.full((self.model.config.vocab_size,), float("-inf"))
        allowed[torch.as_tensor(sorted(vocab))] = 0.0
        self.allowed = allowed  # only whole words may replace a word
        self.words = vocab

    @torch.inference_mode()
    def fill(self, sentences: list[list[str]], masked: list[list[int]]) -> list[list[list[str]]]:
        """For each sentence (a word list) and its masked word positions: K candidates each."""
        mask = self.tokenizer.mask_token
        texts = [
            " ".join(mask if i in set(pos) else w for i, w in enumerate(words))
            for words, pos in zip(sentences, masked, strict=True)
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        logits = self.model(**enc).logits  # (B, L, V)
        out = []
        for row, pos in enumerate(masked):
            where = (enc["input_ids"][row] == self.tokenizer.mask_token_id).nonzero()[:, 0]
            scores = logits[row, where, : len(self.allowed)] + self.allowed[: logits.shape[-1]]
            top = scores.topk(self.k, dim=-1).indices.tolist()
            cands = [[self.words[t] for t in ids] for ids in top]
            cands += [[]] * (len(pos) - len(cands))  # masks cut off by truncation
            out.append(cands)
        return out
