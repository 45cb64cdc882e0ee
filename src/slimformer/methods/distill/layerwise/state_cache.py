"""The teacher's internal states for layer-wise KD, kept on disk (fp16) instead of recomputed.

Layout: ``<root>/<teacher fp>-<data fp>-<parts fp>/states.npy``, one row per real token of every
example (example i's tokens at ``offsets[i]:offsets[i+1]``), each row the concatenated parts
(hidden states of the mapped layers, attention queries and keys) in ``meta.json``'s order;
``filled.npy`` marks examples already written. Filled by the teacher's pass before training
(``teacher_pass.py``), or batch by batch in the first epoch where that pass does not run (several
processes); a crash keeps what was written. Padding is never stored: tokens are gathered and
scattered with the attention mask, whatever the padding side.

The rows go through plain file reads and writes, not a memory map: the first epoch's writes into
a fresh map fault in every page (~1,000 faults and ~9 ms of a ~100 ms step on SST-2's 3,840
columns), and a batch's examples are a few dozen contiguous ranges, one read or write each. The
batch comes back in fp16 (the losses compute in fp32), and the filling pass returns the fp16
rows it wrote, so a cold and a warm run see the same values without reading them back.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slimformer.errors import DataError
from slimformer.utils.hashing import fingerprint_arrays


@dataclass
class Internals:
    """What the layer-wise losses read from a model: per layer number, (B, L, W) tensors."""

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    query: dict[int, torch.Tensor] = field(default_factory=dict)
    key: dict[int, torch.Tensor] = field(default_factory=dict)


def _data_offset(path: Path, shape: tuple[int, int]) -> int:
    """Where the rows start in ``states.npy`` (after its header), checking the header."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        found, fortran, dtype = read_header(f)
        offset = f.tell()
    if tuple(found) != shape or fortran or dtype != np.float16:
        raise DataError(
            f"The teacher-state cache {path} holds {dtype} {found}, not float16 {shape}: it was "
            f"written for other data. Delete {path.parent} and run again."
        )
    return offset


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
        self.shape = (int(self.offsets[-1]), int(self.columns[-1]))
        self.dir.mkdir(parents=True, exist_ok=True)
        states, filled = self.dir / "states.npy", self.dir / "filled.npy"
        if not states.exists():
            np.lib.format.open_memmap(states, mode="w+", dtype=np.float16, shape=self.shape)
            np.lib.format.open_memmap(
                filled, mode="w+", dtype=np.uint8, shape=(len(lengths),)
            ).flush()
            meta = {"layout": layout, "examples": len(lengths)}
            (self.dir / "meta.json").write_text(json.dumps(meta))
        self._start = _data_offset(states, self.shape)
        self._row_bytes = self.shape[1] * 2
        self._file = open(states, "r+b", buffering=0)  # noqa: SIM115 (closed by close())
        self.filled = np.load(filled, mmap_mode="r+")

    @property
    def size_gb(self) -> float:
        return self.shape[0] * self._row_bytes / 2**30

    def missing(self, idx: np.ndarray) -> np.ndarray:
        return self.filled[idx] == 0

    def write(self, idx: np.ndarray, internals, mask: torch.Tensor) -> torch.Tensor:
        """``internals``: anything with hidden/query/key dicts (a Recorder after a forward).
        Returns the real tokens' rows as stored (fp16): ``unpack`` gives the batch as ``read``
        would (the teacher's pass before training skips that)."""
        parts = [getattr(internals, kind)[layer].half() for kind, layer, _ in self.layout]
        mask = mask.bool()
        # the real tokens of every row, row after row (boolean indexing is row-major)
        tokens = torch.cat(parts, dim=-1)[mask.to(parts[0].device)].cpu()
        rows = tokens.numpy()
        ends = np.cumsum(mask.sum(1).cpu().numpy())
        for row, i in enumerate(idx):
            start = ends[row - 1] if row else 0
            self._file.seek(self._start + int(self.offsets[i]) * self._row_bytes)
            data = memoryview(rows[start : ends[row]]).cast("B")
            while data:  # a raw write may take fewer bytes than given
                data = data[self._file.write(data) :]
        self.filled[idx] = 1  # after the values: a crash in between only loses work
        return tokens

    def read(self, idx: np.ndarray, mask: torch.Tensor) -> Internals:
        """The cached parts for a batch, scattered into its padded shape (B, L, W), fp16."""
        counts = self.offsets[idx + 1] - self.offsets[idx]
        rows = np.empty((int(counts.sum()), self.shape[1]), dtype=np.float16)
        at = 0
        for i, n in zip(idx, counts, strict=True):
            self._file.seek(self._start + int(self.offsets[i]) * self._row_bytes)
            got = self._file.readinto(rows[at : at + n])
            if got != n * self._row_bytes:
                raise DataError(
                    f"The teacher-state cache {self.dir} is shorter than its header says (read "
                    f"{got} of {n * self._row_bytes} bytes): delete it and run again."
                )
            at += n
        return self.unpack(torch.from_numpy(rows), mask)

    def unpack(self, tokens: torch.Tensor, mask: torch.Tensor) -> Internals:
        """Token rows (as written, row after row) scattered into the padded batch (B, L, W)."""
        mask = mask.bool().cpu()
        b, length = mask.shape
        out = torch.zeros(b, length, self.shape[1], dtype=tokens.dtype)
        out[mask] = tokens  # row-major, as written
        internals = Internals()
        for n, (kind, layer, _) in enumerate(self.layout):
            getattr(internals, kind)[layer] = out[..., self.columns[n] : self.columns[n + 1]]
        return internals

    def close(self) -> None:
        self.filled.flush()
        self._file.close()
