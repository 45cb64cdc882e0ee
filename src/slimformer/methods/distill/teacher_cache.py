"""The teacher's outputs, computed once per training example and kept on disk.

Layout: ``<root>/<teacher fp>-<data fp>/values.npy`` (N, D) float16 memory-mapped, and
``filled.npy`` (N,) uint8 marking rows already computed. Rows are filled lazily the first time a
batch needs them, so epoch 1 runs the teacher, later epochs and later runs do not. Writes go
through a shared memory map, so rows written before a crash (even kill -9) survive it.
"""

import json
from pathlib import Path

import numpy as np
import torch

from slimformer.utils.hashing import fingerprint_arrays


def dataset_fingerprint(ds, columns: tuple[str, ...], extra: str = "") -> str:
    """Hash of the tokenized model inputs: same tokens in the same order -> same key."""
    arrays = []
    for name in columns:
        if name in ds.column_names:
            col = ds.data.column(name).combine_chunks()
            arrays += [col.offsets.to_numpy(), col.values.to_numpy()]
    return fingerprint_arrays(arrays, extra=extra)


class TeacherCache:
    """Memory-mapped (N, D) table of teacher outputs with a 'filled' bitmap."""

    def __init__(self, root: Path, teacher_fp: str, data_fp: str, num_rows: int) -> None:
        self.dir = Path(root) / f"{teacher_fp}-{data_fp}"
        self.num_rows = num_rows
        self.values: np.ndarray | None = None
        self.filled: np.ndarray | None = None
        if (self.dir / "meta.json").exists():
            self._open(json.loads((self.dir / "meta.json").read_text())["width"])

    def _open(self, width: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        shape = (self.num_rows, width)
        vals, filled = self.dir / "values.npy", self.dir / "filled.npy"
        if not vals.exists():
            np.lib.format.open_memmap(vals, mode="w+", dtype=np.float16, shape=shape).flush()
            np.lib.format.open_memmap(
                filled, mode="w+", dtype=np.uint8, shape=(self.num_rows,)
            ).flush()
            (self.dir / "meta.json").write_text(json.dumps({"width": width, "rows": self.num_rows}))
        self.values = np.load(vals, mmap_mode="r+")
        self.filled = np.load(filled, mmap_mode="r+")

    @property
    def filled_count(self) -> int:
        return 0 if self.filled is None else int(self.filled.sum())

    def missing(self, idx: np.ndarray) -> np.ndarray:
        """Boolean mask over ``idx`` of rows not computed yet."""
        if self.filled is None:
            return np.ones(len(idx), dtype=bool)
        return self.filled[idx] == 0

    def read(self, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.values[idx], dtype=np.float32))

    def write(self, idx: np.ndarray, rows: torch.Tensor) -> None:
        if self.values is None:
            self._open(rows.shape[-1])
        self.values[idx] = rows.detach().float().cpu().numpy().astype(np.float16)
        self.filled[idx] = 1  # after the values: a crash between the two only loses work

    def flush(self) -> None:
        if self.values is not None:
            self.values.flush()
            self.filled.flush()
