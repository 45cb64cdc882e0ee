"""The teacher's top-k next-token log-probs, computed once per training block and kept on disk,
so later epochs and later runs train without running the teacher (TRL issue 3055's request).

Layout: ``<root>/<teacher fp>-<data fp>-k<k>/``: ``log_probs.npy`` (N, P, k) float16 and
``indices.npy`` (N, P, k) int32, memory-mapped, with ``filled.npy`` (N,) marking blocks done.
P = positions per block (block length - 1). At k = 64 and 255 positions a block takes 98 KB,
against 25 MB for the full fp16 distribution of SmolLM2's 49,152-token vocabulary.
"""

import json
from pathlib import Path

import numpy as np
import torch

from slimformer.errors import RecipeError


class TopKCache:
    def __init__(
        self, root: Path, teacher_fp: str, data_fp: str, rows: int, positions: int, k: int
    ) -> None:
        self.dir = Path(root) / f"{teacher_fp}-{data_fp}-k{k}"
        self.k, self.positions, self.num_rows = k, positions, rows
        self.dir.mkdir(parents=True, exist_ok=True)
        files = {n: self.dir / f"{n}.npy" for n in ("log_probs", "indices", "filled")}
        if not (self.dir / "meta.json").exists():
            shape = (rows, positions, k)
            for name, dtype, shp in (
                ("log_probs", np.float16, shape),
                ("indices", np.int32, shape),
                ("filled", np.uint8, (rows,)),
            ):
                np.lib.format.open_memmap(files[name], mode="w+", dtype=dtype, shape=shp).flush()
            (self.dir / "meta.json").write_text(
                json.dumps({"k": k, "rows": rows, "positions": positions})
            )
        self.log_probs = np.load(files["log_probs"], mmap_mode="r+")
        self.indices = np.load(files["indices"], mmap_mode="r+")
        self.filled = np.load(files["filled"], mmap_mode="r+")

    @property
    def filled_count(self) -> int:
        return int(self.filled.sum())

    @property
    def size_gb(self) -> float:
        return self.num_rows * self.positions * self.k * 6 / 1e9

    def missing(self, idx: np.ndarray) -> np.ndarray:
        return self.filled[idx] == 0

    def read(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B*P, k) log-probs (float32) and indices (long), rows in ``idx`` order."""
        lp = np.asarray(self.log_probs[idx], dtype=np.float32).reshape(-1, self.k)
        ix = np.asarray(self.indices[idx], dtype=np.int64).reshape(-1, self.k)
        return torch.from_numpy(lp), torch.from_numpy(ix)

    def write(self, idx: np.ndarray, log_probs: torch.Tensor, indices: torch.Tensor) -> None:
        """``log_probs``/``indices``: (len(idx), P, k)."""
        self.log_probs[idx] = log_probs.float().cpu().numpy().astype(np.float16)
        self.indices[idx] = indices.cpu().numpy().astype(np.int32)
        self.filled[idx] = 1  # after the values: a crash between the two only loses work

    def flush(self) -> None:
        for arr in (self.log_probs, self.indices, self.filled):
            arr.flush()


def check_top_k(k: int, vocab_size: int) -> None:
    if not 0 < k <= vocab_size:
        raise RecipeError(
            f"top_k {k} must be between 1 and the vocabulary size ({vocab_size}); "
            f"64 keeps nearly all of the teacher's mass at a fraction of the disk."
        )
