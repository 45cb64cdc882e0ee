"""One speed change, with and without, inside the real layer-wise run (issue 3).

Whole runs of the same code drift by several per cent on a shared 2-core guest, more than a
change of 1-2 ms a step. So this runs the `cache-bf16` row of textbrewer_compare.py once, and
in its second epoch (teacher states cached) times every batch's forward + backward twice, with
the change on and off (the order alternating), before the real step. The paired differences
give the saving and its standard error.

    .venv/bin/python benchmarks/paired_step_ab.py fused-attention
    .venv/bin/python benchmarks/paired_step_ab.py short-softmax
    .venv/bin/python benchmarks/paired_step_ab.py fast-exp
    .venv/bin/python benchmarks/paired_step_ab.py cached-attention-side
    .venv/bin/python benchmarks/paired_step_ab.py zero-padding-keys
    .venv/bin/python benchmarks/paired_step_ab.py softmax-width-per-dtype

fused-attention: the attention terms of all mapped layers in one autograd Function, the
teacher's side from the state cache (off: one layer at a time from the scores, the teacher's
rebuilt from its q/k as below). short-softmax: short softmax rows
padded to the CPU's vector width (off: torch's softmax). fast-exp: the attention term's exp of
log-probabilities clamped to exp's vector range (off: torch.exp over the padding keys' minima).
cached-attention-side: the attention term's teacher side read from the state cache as computed
once (off: rebuilt in the step from the teacher's q/k, fp16 as the cache held them before; they
are computed outside the timer, so the off side leaves out reading them: the saving is a lower
bound). zero-padding-keys: the attention KL gradient multiplied by the mask of real
(query, key) pairs (off: by the real query rows only, which leaves exp's ~1.6e-38 at the
padding keys to be scaled into denormals before the gradient's batched matmuls).
softmax-width-per-dtype: short rows padded to the width measured for their own dtype (bf16
autocast's attention rows to bf16's; off: to fp32's width whatever the dtype, as before). Both
sides of a pair run with the same dropout masks.
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import textbrewer_compare  # noqa: E402

from slimformer.methods.distill import objective  # noqa: E402
from slimformer.methods.distill.layerwise import distiller  # noqa: E402
from slimformer.methods.distill.layerwise.state_cache import Internals  # noqa: E402
from slimformer.methods.distill.losses import attention_from_projections  # noqa: E402
from slimformer.methods.distill.teacher_targets import teacher_precision  # noqa: E402
from slimformer.utils import fast_softmax  # noqa: E402

CHANGES = (
    "fused-attention",
    "short-softmax",
    "fast-exp",
    "cached-attention-side",
    "zero-padding-keys",
    "softmax-width-per-dtype",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("change", choices=CHANGES)
    p.add_argument("--train-examples", type=int, default=8000)
    args = p.parse_args()
    torch.set_num_threads(2)
    measured_width = fast_softmax.fast_width

    def fp32_width(dtype: torch.dtype = torch.float32) -> int:
        return measured_width(torch.float32)

    distillers = []
    make_distiller = distiller.LayerwiseDistiller.__init__

    def keep_distiller(self, *a, **k):
        make_distiller(self, *a, **k)
        distillers.append(self)

    clamped_exp = attention_from_projections._exp_log_probs
    pair_mask = attention_from_projections.pair_mask

    def query_rows(mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, L, 1): the real query rows only, what the KL term was multiplied by before."""
        return mask.bool()[:, None, :, None].float()

    from_cache = distiller.LayerwiseDistiller._attention_values
    teacher_qk = Internals()  # the batch's teacher q/k (fp16, as the cache held them) for off

    def from_qk(self, term, student, teacher, mask):
        """The term with its teacher side rebuilt from q/k: fused (cached-attention-side) or
        layer by layer (fused-attention)."""
        if args.change == "fused-attention":
            term = dataclasses.replace(term, from_projections=None, attention_kind=None)
            return from_cache(self, term, student, teacher_qk, mask)
        layers, t_layers = self._attention_layers, [self.mapping[m] for m in self._attention_layers]
        return attention_from_projections.attention_term(
            term.attention_kind,
            torch.stack([student.query[m] for m in layers]),
            torch.stack([student.key[m] for m in layers]),
            torch.stack([teacher_qk.query[t] for t in t_layers]),
            torch.stack([teacher_qk.key[t] for t in t_layers]),
            self._pair_heads,
            mask,
        )

    def fetch_teacher_qk(d, batch) -> None:
        with (
            torch.no_grad(),
            teacher_precision(d.precision, "cpu"),
            d.teacher_recorder.record() as rec,
        ):
            d.forward(d._teacher, batch)
        teacher_qk.query = {t: x.half() for t, x in rec.query.items()}
        teacher_qk.key = {t: x.half() for t, x in rec.key.items()}

    def switch(on: bool) -> None:
        if args.change in ("cached-attention-side", "fused-attention"):
            distiller.LayerwiseDistiller._attention_values = from_cache if on else from_qk
        elif args.change == "zero-padding-keys":
            attention_from_projections.pair_mask = pair_mask if on else query_rows
        elif args.change == "fast-exp":
            attention_from_projections._exp_log_probs = clamped_exp if on else torch.exp
        elif args.change == "softmax-width-per-dtype":
            fast_softmax.fast_width = measured_width if on else fp32_width
        else:  # short-softmax
            fast_softmax.fast_width = measured_width if on else (lambda dtype=None: 0)
            F.softmax = fast_softmax.softmax if on else fast_softmax._torch_softmax
            F.log_softmax = fast_softmax.log_softmax if on else fast_softmax._torch_log_softmax

    seconds = {True: [], False: []}
    losses = {True: [], False: []}
    steps_per_epoch = -(-args.train_examples // 32)
    step = {"n": 0}
    real_call = objective.KDLoss.__call__

    def call(self, model, batch, progress):
        step["n"] += 1
        if step["n"] > steps_per_epoch + 2:  # second epoch: the teacher states are cached
            params = list(model.parameters())
            if self.aux_module is not None:
                params += list(self.aux_module.parameters())
            if args.change in ("cached-attention-side", "fused-attention"):
                fetch_teacher_qk(distillers[0], batch)
            for on in (True, False) if step["n"] % 2 else (False, True):
                switch(on)
                torch.manual_seed(step["n"])  # the same dropout masks for both sides
                start = time.perf_counter()
                loss, _ = real_call(self, model, batch, progress)
                loss.backward()
                seconds[on].append(time.perf_counter() - start)
                losses[on].append(loss.item())
                for p_ in params:
                    p_.grad = None
            switch(True)
        return real_call(self, model, batch, progress)

    distiller.LayerwiseDistiller.__init__ = keep_distiller
    objective.KDLoss.__call__ = call
    textbrewer_compare.run_timed_row(args.train_examples)
    on, off = (np.mean(seconds[k]) * 1000 for k in (True, False))
    from slimformer.hardware.cpu_features import cpu_name

    print(
        f"{args.change} on {cpu_name()}: forward + backward {on:.2f} ms with, {off:.2f} ms "
        f"without; " + textbrewer_compare.paired_saving(seconds[False], seconds[True])
    )
    gap = np.abs(np.subtract(losses[True], losses[False]))
    print(f"loss difference between the sides: largest {gap.max():.2e}, mean {gap.mean():.2e}")


if __name__ == "__main__":
    main()
