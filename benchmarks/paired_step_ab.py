"""One speed change, with and without, inside the real layer-wise run (issue 3).

Whole runs of the same code drift by several per cent on a shared 2-core guest, more than a
change of 1-2 ms a step. So this runs the `cache-bf16` row of textbrewer_compare.py once, and
in its second epoch (teacher states cached) times every batch's forward + backward twice, with
the change on and off (the order alternating), before the real step. The paired differences
give the saving and its standard error.

    .venv/bin/python benchmarks/paired_step_ab.py fused-attention
    .venv/bin/python benchmarks/paired_step_ab.py short-softmax
    .venv/bin/python benchmarks/paired_step_ab.py fast-exp

fused-attention: the attention terms of all mapped layers in one autograd Function from the
q/k projections (off: one layer at a time from the scores). short-softmax: short softmax rows
padded to the CPU's vector width (off: torch's softmax). fast-exp: the attention term's exp of
log-probabilities clamped to exp's vector range (off: torch.exp over the padding keys' minima).
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
from slimformer.methods.distill.losses import attention_from_projections  # noqa: E402
from slimformer.utils import fast_softmax  # noqa: E402

CHANGES = ("fused-attention", "short-softmax", "fast-exp")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("change", choices=CHANGES)
    p.add_argument("--train-examples", type=int, default=8000)
    args = p.parse_args()
    torch.set_num_threads(2)
    width = fast_softmax.fast_width()
    distillers = []
    make_distiller = distiller.LayerwiseDistiller.__init__

    def keep_distiller(self, *a, **k):
        make_distiller(self, *a, **k)
        self.fused_terms = dict(self.terms)
        distillers.append(self)

    clamped_exp = attention_from_projections._exp_log_probs

    def switch(on: bool) -> None:
        if args.change == "fast-exp":
            attention_from_projections._exp_log_probs = clamped_exp if on else torch.exp
        elif args.change == "short-softmax":
            fast_softmax.fast_width = (lambda: width) if on else (lambda: 0)
            F.softmax = fast_softmax.softmax if on else fast_softmax._torch_softmax
            F.log_softmax = fast_softmax.log_softmax if on else fast_softmax._torch_log_softmax
        else:
            for d in distillers:
                d.terms = {
                    k: v if on else dataclasses.replace(v, from_projections=None)
                    for k, v in d.fused_terms.items()
                }

    seconds = {True: [], False: []}
    steps_per_epoch = -(-args.train_examples // 32)
    step = {"n": 0}
    real_call = objective.KDLoss.__call__

    def call(self, model, batch, progress):
        step["n"] += 1
        if step["n"] > steps_per_epoch + 2:  # second epoch: the teacher states are cached
            params = list(model.parameters())
            if self.aux_module is not None:
                params += list(self.aux_module.parameters())
            for on in (True, False) if step["n"] % 2 else (False, True):
                switch(on)
                start = time.perf_counter()
                loss, _ = real_call(self, model, batch, progress)
                loss.backward()
                seconds[on].append(time.perf_counter() - start)
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


if __name__ == "__main__":
    main()
