"""The gradients' total 2-norm (clipping) in two forms, on the gradients of the 3-layer student
of textbrewer_compare.py (issue 3).

The clip before the fused AdamW step needs the 2-norm over all gradients: 57 tensors, 8.9 M
values (the word-embedding table as the rows seen in the 8,000 training sentences, 8,532 x
384). torch's ``_foreach_norm`` runs one reduction kernel per tensor on CPU; a dot product of
each flattened gradient with itself goes to the BLAS. Both read every value once. The norm
computed in fp64 is printed as the reference for both.

    .venv/bin/python benchmarks/grad_norm_forms.py
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import textbrewer_compare  # noqa: E402

from slimformer.train.clipping import total_norm  # noqa: E402

SEEN_ROWS = 8532  # word-embedding rows the benchmark's 8,000 training sentences reach


def student_gradients() -> list[torch.Tensor]:
    """Random gradients shaped as the student's trained parameters in the benchmark run."""
    from transformers import AutoModelForSequenceClassification

    from slimformer.models.student import copy_layers

    teacher = AutoModelForSequenceClassification.from_pretrained(textbrewer_compare.TEACHER)
    student = copy_layers(teacher, [0, 3, 5])
    shapes = [
        (SEEN_ROWS, p.shape[1]) if name.endswith("word_embeddings.weight") else tuple(p.shape)
        for name, p in student.named_parameters()
    ]
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g) * 1e-3 for s in shapes]


def foreach_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def main() -> None:
    from slimformer.hardware.cpu_features import cpu_name

    torch.set_num_threads(2)
    grads = student_gradients()
    forms = {"torch._foreach_norm": foreach_norm, "dot products (shipped)": total_norm}
    values = {name: float(fn(grads)) for name, fn in forms.items()}
    best = {name: float("inf") for name in forms}
    for _ in range(5):  # rounds, forms interleaved; best of each
        for name, fn in forms.items():
            started = time.perf_counter()
            for _ in range(50):
                fn(grads)
            best[name] = min(best[name], (time.perf_counter() - started) / 50)
    count = sum(g.numel() for g in grads)
    exact = float(torch.stack([g.double().square().sum() for g in grads]).sum().sqrt())
    print(f"{cpu_name()}: {len(grads)} gradients, {count / 1e6:.2f} M values")
    print(f"  norm in fp64: {exact:.6f}")
    for name in forms:
        print(f"  {name}: {best[name] * 1000:.3f} ms, norm {values[name]:.6f}")


if __name__ == "__main__":
    main()
