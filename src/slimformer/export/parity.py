"""Parity of an exported model with its PyTorch source on real inputs: the export fails loudly
rather than shipping a graph that answers differently."""

import numpy as np

from slimformer.errors import ExportError


def parity(
    reference: np.ndarray, candidate: np.ndarray, classes: int | None = None
) -> dict[str, float]:
    """Max absolute logit difference and prediction agreement, over the same examples.
    ``classes``: rows hold several positions of that many classes each (token tasks); the
    agreement is then per real position (padding rows, all zeros, left out)."""
    if classes:
        reference, candidate = reference.reshape(-1, classes), candidate.reshape(-1, classes)
        real = np.abs(reference).sum(1) > 0
        reference, candidate = reference[real], candidate[real]
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "agreement": float((reference.argmax(-1) == candidate.argmax(-1)).mean()),
    }


def check_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    max_abs_diff: float = 1e-3,
    min_agreement: float = 0.999,
    what: str = "ONNX export",
    classes: int | None = None,
) -> dict[str, float]:
    result = parity(reference, candidate, classes)
    if result["max_abs_diff"] > max_abs_diff or result["agreement"] < min_agreement:
        raise ExportError(
            f"{what} does not match PyTorch: max logit difference {result['max_abs_diff']:.2e} "
            f"(allowed {max_abs_diff:.0e}), prediction agreement {result['agreement']:.4f} "
            f"(required {min_agreement}). The exported graph is wrong; do not ship it. Try "
            f"another opset (--opset) or report the model type."
        )
    return result
