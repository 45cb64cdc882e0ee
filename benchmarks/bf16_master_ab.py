"""A bf16 student with fp32 master weights against bf16 autocast, inside the real layer-wise run
(issue 3): is "bf16-full" training worth building?

Under autocast every step casts the linear weights to bf16 in the forward and their gradients
back to fp32 in the backward, and layer norms, dropout and the residual stream run in fp32.
The alternative keeps a bf16 copy of the student (the shadow) for the forward and backward;
AdamW updates the fp32 masters from fp32 copies of the shadow's gradients (push), and the
shadow takes the new weights after every step (pull). Embedding tables stay fp32 and shared
(a lookup reads a few rows; its output is cast to bf16).

This runs the `cache-bf16` row of textbrewer_compare.py and, in its second epoch, times every
batch's forward + backward twice, as the run does it (autocast) and on the shadow with its
push and pull, the order alternating. The shadow is refreshed from the trained student at each
timed batch, so both see the same weights.

    .venv/bin/python benchmarks/bf16_master_ab.py
"""

import copy
import sys
import time
from pathlib import Path
from types import MethodType

import numpy as np
import torch
from accelerate.utils import convert_outputs_to_fp32, extract_model_from_parallel
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import textbrewer_compare  # noqa: E402

from slimformer.methods.distill import objective  # noqa: E402
from slimformer.train.seen_rows import SeenRowsEmbedding  # noqa: E402


def _to_bf16(_module, _inputs, output):
    return output.to(torch.bfloat16) if torch.is_floating_point(output) else output


class Shadow:
    """A bf16 copy of ``model`` sharing its fp32 embedding tables; forward hooks already on
    ``model`` (the layer-wise recorders) are copied and fire on it."""

    def __init__(self, model: nn.Module) -> None:
        tables = [m for m in model.modules() if isinstance(m, nn.Embedding | SeenRowsEmbedding)]
        shared = {id(t): t for m in tables for t in [*m.parameters(), *m.buffers()]}
        shadow = copy.deepcopy(model, memo=dict(shared))
        for module in shadow.modules():
            for t in module._parameters.values():
                if t is not None and id(t) not in shared and t.is_floating_point():
                    t.data = t.data.to(torch.bfloat16)
        for m in shadow.modules():
            if isinstance(m, nn.Embedding | SeenRowsEmbedding):
                m.register_forward_hook(_to_bf16)
        shadow.forward = MethodType(convert_outputs_to_fp32(type(shadow).forward), shadow)
        self.module = shadow.train()
        pairs = [
            (m, t)
            for m, t in zip(model.parameters(), shadow.parameters(), strict=True)
            if m.requires_grad and m is not t
        ]
        self.master, self.twin = [m for m, _ in pairs], [t for _, t in pairs]
        self.grads = [torch.zeros_like(m) for m in self.master]

    @torch.no_grad()
    def push(self) -> None:
        """The shadow's gradients into fp32 buffers set as the masters' ``.grad``."""
        have = [
            (b, t.grad, m)
            for b, t, m in zip(self.grads, self.twin, self.master, strict=True)
            if t.grad is not None
        ]
        torch._foreach_copy_([b for b, _, _ in have], [g for _, g, _ in have])
        for b, _, m in have:
            m.grad = b

    @torch.no_grad()
    def pull(self) -> None:
        torch._foreach_copy_(self.twin, self.master)


def main() -> None:
    torch.set_num_threads(2)
    seconds = {"autocast": [], "shadow": []}
    parts = {"forward + backward": [], "push": [], "pull": []}
    steps_per_epoch = -(-8000 // 32)
    step = {"n": 0}
    real_call = objective.KDLoss.__call__
    held = {}

    def call(self, model, batch, progress):
        step["n"] += 1
        if step["n"] > steps_per_epoch + 2:  # second epoch: the teacher states are cached
            if "shadow" not in held:
                held["shadow"] = Shadow(extract_model_from_parallel(model))
            shadow = held["shadow"]
            shadow.pull()  # the trained student's current weights
            params = list(model.parameters()) + list(shadow.module.parameters())
            if self.aux_module is not None:
                params += list(self.aux_module.parameters())
            for kind in ("shadow", "autocast") if step["n"] % 2 else ("autocast", "shadow"):
                start = time.perf_counter()
                loss, _ = real_call(
                    self, shadow.module if kind == "shadow" else model, batch, progress
                )
                loss.backward()
                if kind == "shadow":
                    t1 = time.perf_counter()
                    shadow.push()
                    t2 = time.perf_counter()
                    shadow.pull()
                    t3 = time.perf_counter()
                    parts["forward + backward"].append(t1 - start)
                    parts["push"].append(t2 - t1)
                    parts["pull"].append(t3 - t2)
                seconds[kind].append(time.perf_counter() - start)
                for p in params:
                    p.grad = None
        return real_call(self, model, batch, progress)

    objective.KDLoss.__call__ = call
    textbrewer_compare.run_timed_row()
    from slimformer.hardware.cpu_features import cpu_name

    print(
        f"{cpu_name()}: autocast forward + backward {np.mean(seconds['autocast']) * 1000:.2f} "
        "ms; bf16 shadow "
        + ", ".join(f"{k} {np.mean(v) * 1000:.2f}" for k, v in parts.items())
        + f" ms, {np.mean(seconds['shadow']) * 1000:.2f} in all; "
        + textbrewer_compare.paired_saving(seconds["autocast"], seconds["shadow"])
    )


if __name__ == "__main__":
    main()
