"""The teacher's internal states for layer-wise KD, kept on disk (fp16) instead of recomputed.

Layout: ``<root>/<teacher fp>-<data fp>-<parts fp>/states.npy``, one row per real token of every
example (example i's tokens at ``offsets[i]:offsets[i+1]``), each row the concatenated parts
(hidden states of the mapped layers, attention queries and keys) in ``meta.json``'s order;
``filled.npy`` marks examples already written. Filled lazily in the first epoch like the logit
cache, so a crash keeps what was written. Padding is never stored: tokens are gathered and
scattered with the attention mask, whatever the padding side.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slimformer.utils.hashing import fingerprint_arrays


@dataclass
class Internals:
    """What the layer-wise losses read from a model: per layer number, (B, L, W) tensors."""

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    query: dict[int, torch.Tensor] = field(default_factory=dict)
    key: dict[int, torch.Tensor] = field(default_factory=dict)


class TeacherStateCache:
    def __init__(
        self,
        root: Path,
        teacher_fp: str,
        data_fp: str,
        lengths: np.ndarray,
        layout: list[tuple[str, int, int]],
    ) -> None:
        """``layout``: (kind, layer, width) parts, kind in hidden / query / key."""
        self.layout = layout
        self.columns = np.concatenate([[0], np.cumsum([w for _, _, w in layout])]).astype(int)
        key = fingerprint_arrays([], extra=json.dumps(layout))
        self.dir = Path(root) / f"{teacher_fp}-{data_fp}-{key[:12]}"
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.dir.mkdir(parents=True, exist_ok=True)
        states, filled = self.dir / "states.npy", self.dir / "filled.npy"
        if not states.exists():
            shape = (int(self.offsets[-1]), int(self.columns[-1]))
            np.lib.format.open_memmap(states, mode="w+", dtype=np.float16, shape=shape).flush()
            np.lib.format.open_memmap(
                filled, mode="w+", dtype=np.uint8, shape=(len(lengths),)
            ).flush()
            meta = {"layout": layout, "examples": len(lengths)}
            (self.dir / "meta.json").write_text(json.dumps(meta))
        self.states = np.load(states, mmap_mode="r+")
        self.filled = np.load(filled, mmap_mode="r+")

    @property
    def size_gb(self) -> float:
        return self.states.nbytes / 2**30

    def missing(self, idx: np.ndarray) -> np.ndarray:
        return self.filled[idx] == 0

    def write(self, idx: np.ndarray, internals, mask: torch.Tensor) -> None:
        """``internals``: anything with hidden/query/key dicts (a Recorder after a forward)."""
        parts = [getattr(internals, kind)[layer] for kind, layer, _ in self.layout]
        packed = torch.cat(parts, dim=-1)  # (B, L, all columns)
        mask = mask.bool()
        # the real tokens of every row, row after row (boolean indexing is row-major), in fp16
        tokens = packed[mask.to(packed.device)].to(torch.float16).cpu().numpy()
        ends = np.cumsum(mask.sum(1).cpu().numpy())
        for row, i in enumerate(idx):
            start = ends[row - 1] if row else 0
            self.states[self.offsets[i] : self.offsets[i + 1]] = tokens[start : ends[row]]
        self.filled[idx] = 1  # after the values: a crash in between only loses work

    def read(self, idx: np.ndarray, mask: torch.Tensor) -> Internals:
        """The cached parts for a batch, scattered into its padded shape (B, L, W)."""
        b, length = mask.shape
        out = torch.zeros(b, length, int(self.columns[-1]))
        mask = mask.bool().cpu()
        tokens = np.concatenate([self.states[self.offsets[i] : self.offsets[i + 1]] for i in idx])
        out[mask] = torch.from_numpy(tokens.astype(np.float32))  # row-major, as written
        internals = Internals()
        for n, (kind, layer, _) in enumerate(self.layout):
            getattr(internals, kind)[layer] = out[..., self.columns[n] : self.columns[n + 1]]
        return internals

    def flush(self) -> None:
        self.states.flush()
        self.filled.flush()
