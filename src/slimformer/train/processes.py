"""The processes of this run: one under plain ``python``, N under ``accelerate launch``.

Accelerate only forms a CPU process group (gloo) when asked for ``cpu=True``; its launcher
does not say so for CPU-only machines, so slimformer asks whenever no GPU is there. Launch N
processes on a CPU machine with ``accelerate launch --multi_gpu --num_processes N``.
"""

import torch
from accelerate import PartialState


def use_cpu() -> bool:
    return not torch.cuda.is_available()


def processes() -> PartialState:
    return PartialState(cpu=use_cpu())
