"""Texts in, labels and scores out, for any folder slimformer writes (PyTorch, compiled,
int8, ONNX): the folder's own tokenizer and runtime, via ``load_variant``."""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer

from slimformer.eval.variants import load_variant
from slimformer.tasks import get_task


class TextClassifier:
    def __init__(self, folder: str | Path, max_length: int = 128) -> None:
        self.folder = Path(folder)
        self.task = get_task("sequence-classification")
        self.variant = load_variant(self.folder, self.task)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        config = AutoConfig.from_pretrained(self.folder)
        self.labels = [config.id2label[i] for i in range(len(config.id2label))]
        self.max_length = max_length

    def logits(self, texts: list[str]) -> np.ndarray:
        feed = dict(
            self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )
        out = self.variant.run(feed)
        values = out[0] if isinstance(out, list | tuple) else out.logits
        return values.float().numpy() if torch.is_tensor(values) else np.asarray(values)

    def predict(self, texts: list[str]) -> list[dict]:
        logits = self.logits(texts)
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        return [
            {
                "label": self.labels[int(s.argmax())],
                "score": round(float(s.max()), 6),
                "scores": {
                    name: round(float(p), 6) for name, p in zip(self.labels, s, strict=True)
                },
            }
            for s in scores
        ]
