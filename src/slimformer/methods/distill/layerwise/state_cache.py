"""The teacher's internal states for layer-wise KD, kept on disk (fp16) instead of recomputed.

Layout: ``<root>/<teacher fp>-<data fp>-<parts fp>/``, ``meta.json`` naming the parts, and:

- ``states.npy``: one row per real token of every example (example i's tokens at
  ``offsets[i]:offsets[i+1]``), each row the concatenated per-token parts (hidden states of the
  mapped layers; the attention queries and keys where the attention terms rebuild the teacher's
  side from them);
- ``pairs.npy``: where the attention terms take the teacher's side as it is (its attention
  probabilities for KL, its scores for MSE), every example's (channel, query, key) values over
  its real tokens, channel = (part, head), ``channels x L_i^2`` values for an example of
  ``L_i`` tokens. The term's teacher side is then the same at every epoch, and is not rebuilt
  from q/k in every step (head split, batched matmul, mask, log-softmax, exp); at SST-2's
  lengths it also takes fewer bytes than the q/k it replaces (3 x 12 x L values a token
  against 2 x 3 x 384).

``filled.npy`` marks examples already written. Filled by the teacher's pass before training
(``teacher_pass.py``), or batch by batch in the first epoch where that pass does not run (several
processes); a crash keeps what was written. Padding is never stored: tokens and pairs are
gathered and scattered with the attention mask, whatever the padding side.

The rows go through plain file reads and writes, not a memory map: the first epoch's writes into
a fresh map fault in every page (~1,000 faults and ~9 ms of a ~100 ms step on SST-2's 3,840
columns), and a batch's examples are a few dozen contiguous ranges, one read or write each. The
batch comes back in fp16 (the losses compute in fp32), and the filling pass returns
the fp16 values it wrote, so a cold and a warm run see the same values without reading them back.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from slimformer.errors import DataError
from slimformer.methods.distill.losses.attention_from_projections import pair_mask
from slimformer.utils.hashing import fingerprint_arrays

TOKEN_KINDS = ("hidden", "query", "key")
PAIR_KINDS = ("probs", "scores")  # the teacher's attention probabilities / scores


@dataclass
class Internals:
    """What the layer-wise losses read from a model: per layer number, (B, L, W) tensors; and
    from the state cache, the teacher's attention pairs (see ``TeacherStateCache``)."""

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    query: dict[int, torch.Tensor] = field(default_factory=dict)
    key: dict[int, torch.Tensor] = field(default_factory=dict)
    # (parts, B, heads, L, L) fp16, the pair parts in the cache layout's order, 0 off real pairs
    pairs: torch.Tensor | None = None


@dataclass
class Stored:
    """A batch's values as written (fp16, padding left out): what ``unpack`` takes."""

    tokens: torch.Tensor  # (real tokens, columns)
    pairs: torch.Tensor | None  # (real pairs x channels,), example after example


def _data_offset(path: Path, shape: tuple[int, int]) -> int:
    """Where the rows start in a ``.npy`` file (after its header), checking the header."""
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


class _RowFile:
    """A float16 ``.npy`` file of ``width``-wide rows; example i owns rows
    ``offsets[i]:offsets[i+1]``. Read and written with plain file calls (see the module doc)."""

    def __init__(self, path: Path, offsets: np.ndarray, width: int) -> None:
        self.path, self.offsets = path, offsets
        self.shape = (int(offsets[-1]), width)
        self.row_bytes = width * 2
        if not path.exists():
            np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=self.shape)
        self._start = _data_offset(path, self.shape)
        self._file = open(path, "r+b", buffering=0)  # noqa: SIM115 (closed by close())

    def write(self, idx: np.ndarray, rows: np.ndarray, ends: np.ndarray) -> None:
        """``rows`` holds the examples ``idx`` one after the other, example k's ending at
        ``ends[k]``."""
        for k, i in enumerate(idx):
            start = ends[k - 1] if k else 0
            self._file.seek(self._start + int(self.offsets[i]) * self.row_bytes)
            data = memoryview(np.ascontiguousarray(rows[start : ends[k]])).cast("B")
            while data:  # a raw write may take fewer bytes than given
                data = data[self._file.write(data) :]

    def read(self, idx: np.ndarray) -> np.ndarray:
        """The rows of the examples ``idx``, one after the other."""
        counts = self.offsets[idx + 1] - self.offsets[idx]
        rows = np.empty((int(counts.sum()), self.shape[1]), dtype=np.float16)
        at = 0
        for i, n in zip(idx, counts, strict=True):
            self._file.seek(self._start + int(self.offsets[i]) * self.row_bytes)
            got = self._file.readinto(rows[at : at + n])
            if got != n * self.row_bytes:
                raise DataError(
                    f"The teacher-state cache {self.path.parent} is shorter than its header "
                    f"says (read {got} of {n * self.row_bytes} bytes from {self.path.name}): "
                    f"delete it and run again."
                )
            at += n
        return rows

    def close(self) -> None:
        self._file.close()


class TeacherStateCache:
    def __init__(
        self,
        root: Path,
        teacher_fp: str,
        data_fp: str,
        lengths: np.ndarray,
        layout: list[tuple[str, int, int]],
    ) -> None:
        """``layout``: (kind, layer, width) parts. Per-token kinds (hidden / query / key) give
        their width in columns; pair kinds (probs / scores) their head count, the same for all."""
        self.layout = [p for p in layout if p[0] in TOKEN_KINDS]
        self.pair_layout = [p for p in layout if p[0] in PAIR_KINDS]
        unknown = [p for p in layout if p[0] not in TOKEN_KINDS + PAIR_KINDS]
        heads = {w for _, _, w in self.pair_layout}
        if unknown or len(heads) > 1:
            raise ValueError(f"bad state-cache layout {layout}")
        self.pair_heads = heads.pop() if heads else 0
        self.channels = self.pair_heads * len(self.pair_layout)
        self.columns = np.concatenate([[0], np.cumsum([w for _, _, w in self.layout])]).astype(int)
        key = fingerprint_arrays([], extra=json.dumps(layout))
        self.dir = Path(root) / f"{teacher_fp}-{data_fp}-{key[:12]}"
        lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.shape = (int(self.offsets[-1]), int(self.columns[-1]))
        self.dir.mkdir(parents=True, exist_ok=True)
        filled = self.dir / "filled.npy"
        fresh = not filled.exists()
        self._tokens = (
            _RowFile(self.dir / "states.npy", self.offsets, self.shape[1])
            if self.shape[1]
            else None
        )
        self._pairs = (
            _RowFile(
                self.dir / "pairs.npy",
                np.concatenate([[0], np.cumsum(lengths**2 * self.channels)]).astype(np.int64),
                1,
            )
            if self.channels
            else None
        )
        if fresh:  # written last: the value files exist once it does
            meta = {"layout": layout, "examples": len(lengths)}
            (self.dir / "meta.json").write_text(json.dumps(meta))
            np.lib.format.open_memmap(
                filled, mode="w+", dtype=np.uint8, shape=(len(lengths),)
            ).flush()
        self.filled = np.load(filled, mmap_mode="r+")

    @property
    def size_gb(self) -> float:
        files = [f for f in (self._tokens, self._pairs) if f is not None]
        return sum(f.shape[0] * f.row_bytes for f in files) / 2**30

    def missing(self, idx: np.ndarray) -> np.ndarray:
        return self.filled[idx] == 0

    def write(
        self, idx: np.ndarray, internals, mask: torch.Tensor, pairs: torch.Tensor | None = None
    ) -> Stored:
        """``internals``: anything with hidden/query/key dicts (a Recorder after a forward);
        ``pairs``: (parts, B, heads, L, L) in the pair parts' order, when the layout has them.
        Returns the values as stored (fp16): ``unpack`` gives the batch as ``read`` would (the
        teacher's pass before training skips that)."""
        mask = mask.bool()
        lengths = mask.sum(1).cpu().numpy()
        tokens = torch.empty(0, 0, dtype=torch.float16)
        if self._tokens is not None:
            parts = [getattr(internals, kind)[layer].half() for kind, layer, _ in self.layout]
            # the real tokens of every row, row after row (boolean indexing is row-major)
            tokens = torch.cat(parts, dim=-1)[mask.to(parts[0].device)].cpu()
            self._tokens.write(idx, tokens.numpy(), np.cumsum(lengths))
        stored_pairs = None
        if self._pairs is not None:
            if pairs is None or pairs.shape[0] * pairs.shape[2] != self.channels:
                raise ValueError(f"the layout needs {self.channels} pair channels")
            stored_pairs = _gather_pairs(pairs.half(), mask.to(pairs.device)).cpu()
            ends = np.cumsum(lengths**2 * self.channels)
            self._pairs.write(idx, stored_pairs.numpy()[:, None], ends)
        self.filled[idx] = 1  # after the values: a crash in between only loses work
        return Stored(tokens, stored_pairs)

    def read(self, idx: np.ndarray, mask: torch.Tensor) -> Internals:
        """The cached parts for a batch, scattered into its padded shape, fp16: (B, L, W) per
        token part, (parts, B, heads, L, L) for the pairs (0 off the real pairs)."""
        tokens = torch.from_numpy(self._tokens.read(idx)) if self._tokens is not None else None
        pairs = torch.from_numpy(self._pairs.read(idx)[:, 0]) if self._pairs is not None else None
        return self.unpack(Stored(tokens, pairs), mask)

    def unpack(self, stored: Stored, mask: torch.Tensor) -> Internals:
        """Values as written (example after example) scattered into the padded batch."""
        mask = mask.bool().cpu()
        b, length = mask.shape
        internals = Internals()
        if self._tokens is not None:
            out = torch.zeros(b, length, self.shape[1], dtype=stored.tokens.dtype)
            out[mask] = stored.tokens  # row-major, as written
            for n, (kind, layer, _) in enumerate(self.layout):
                getattr(internals, kind)[layer] = out[..., self.columns[n] : self.columns[n + 1]]
        if self._pairs is not None:
            shape = (len(self.pair_layout), b, self.pair_heads, length, length)
            internals.pairs = _scatter_pairs(stored.pairs, mask, shape)
        return internals

    def close(self) -> None:
        self.filled.flush()
        for f in (self._tokens, self._pairs):
            if f is not None:
                f.close()


def _real_ranges(mask: torch.Tensor) -> list[tuple[int, int]] | None:
    """(start, count) of each row's real tokens where they are one run in every row (right or
    left padding), else None."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    first = torch.where(mask, positions, mask.shape[1]).min(1).values
    last = torch.where(mask, positions, -1).max(1).values
    counts = mask.sum(1)
    if not bool(((last - first + 1 == counts) | (counts == 0)).all()):
        return None
    return list(zip(first.tolist(), counts.tolist(), strict=True))


def _pair_rows(mask: torch.Tensor, b: int, channels: int, length: int) -> torch.Tensor:
    """(B, channels, L, L) mask of the real (query, key) pairs."""
    return pair_mask(mask).bool().expand(b, channels, length, length)


def _gather_pairs(pairs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(parts, B, heads, L, L) -> the real pairs, example after example, each in (part, head,
    query, key) order. A slice per example where its tokens are one run: a boolean index over
    the whole batch took ~4x as long."""
    parts, b, heads, length, _ = pairs.shape
    ranges = _real_ranges(mask)
    if ranges is None:
        rows = pairs.transpose(0, 1).reshape(b, parts * heads, length, length)
        return rows[_pair_rows(mask, b, parts * heads, length)]
    blocks = [pairs[:, i, :, a : a + n, a : a + n].reshape(-1) for i, (a, n) in enumerate(ranges)]
    return torch.cat(blocks)


def _scatter_pairs(values: torch.Tensor, mask: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Inverse of ``_gather_pairs``: into zeros of ``shape`` (parts, B, heads, L, L)."""
    parts, b, heads, length, _ = shape
    ranges = _real_ranges(mask)
    if ranges is None:
        out = torch.zeros(b, parts * heads, length, length, dtype=values.dtype)
        out[_pair_rows(mask, b, parts * heads, length)] = values
        return out.view(b, parts, heads, length, length).transpose(0, 1).contiguous()
    out = torch.zeros(shape, dtype=values.dtype)
    blocks = values.split([parts * heads * n * n for _, n in ranges])
    for i, ((a, n), block) in enumerate(zip(ranges, blocks, strict=True)):
        out[:, i, :, a : a + n, a : a + n] = block.view(parts, heads, n, n)
    return out
