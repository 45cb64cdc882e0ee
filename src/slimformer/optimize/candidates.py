"""The deployment candidates and which of them this CPU can run fast.

A candidate is a runtime (PyTorch or ONNX Runtime), a precision, a quantization method and
whether the graph is compiled. Candidates that need a matrix unit the CPU lacks are skipped with
the reason (bf16 without AMX-BF16/AVX512-BF16/ARM-bf16 is emulated and slower than fp32), so on
any CPU the choice falls back to what works there."""

from dataclasses import dataclass

from slimformer.errors import RecipeError
from slimformer.hardware.cpu_features import CpuFeatures


@dataclass(frozen=True)
class Candidate:
    name: str
    runtime: str  # "pytorch" | "onnxruntime"
    precision: str  # "fp32" | "bf16" | "int8"
    quantization: str  # "none" | "torch-dynamic" | "pt2e-static" | "pt2e-dynamic" | "ort-*"
    compiled: bool = False
    needs: str | None = None  # "bf16_unit" | "x86_int8_unit"


BASELINE = "pytorch-fp32"
CANDIDATES: tuple[Candidate, ...] = (
    Candidate(BASELINE, "pytorch", "fp32", "none"),
    Candidate("pytorch-fp32-compiled", "pytorch", "fp32", "none", compiled=True),
    Candidate("pytorch-bf16", "pytorch", "bf16", "none", needs="bf16_unit"),
    Candidate("pytorch-bf16-compiled", "pytorch", "bf16", "none", True, "bf16_unit"),
    Candidate("pytorch-int8-dynamic", "pytorch", "int8", "torch-dynamic"),
    Candidate(
        "pytorch-int8-dynamic-compiled", "pytorch", "int8", "pt2e-dynamic", True, "x86_int8_unit"
    ),
    Candidate(
        "pytorch-int8-static-compiled", "pytorch", "int8", "pt2e-static", True, "x86_int8_unit"
    ),
    Candidate("onnxruntime-fp32", "onnxruntime", "fp32", "none"),
    Candidate("onnxruntime-int8-dynamic", "onnxruntime", "int8", "ort-dynamic"),
    Candidate("onnxruntime-int8-static", "onnxruntime", "int8", "ort-static"),
)
BY_NAME = {c.name: c for c in CANDIDATES}


def unavailable_reason(candidate: Candidate, cpu: CpuFeatures) -> str | None:
    """Why ``candidate`` is skipped on ``cpu``, or None when it can run there."""
    if candidate.needs == "bf16_unit" and cpu.bf16_unit is None:
        return "no bf16 matrix unit (AMX-BF16, AVX512-BF16 or ARM bf16): bf16 would be emulated"
    if candidate.needs == "x86_int8_unit":
        if cpu.arch != "x86_64":
            return "the x86 inductor quantizer targets x86 CPUs"
        if cpu.int8_unit is None:
            return "no int8 dot-product unit (AMX-INT8, AVX512-VNNI or AVX-VNNI)"
    return None


def select_candidates(
    names: list[str] | None, cpu: CpuFeatures
) -> tuple[list[Candidate], dict[str, str]]:
    """The candidates to try (the baseline always first) and the skipped ones with reasons."""
    if names:
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise RecipeError(
                f"Unknown optimize candidate(s) {unknown}. Known: {', '.join(BY_NAME)}."
            )
    wanted = [BY_NAME[n] for n in names] if names else list(CANDIDATES)
    if BY_NAME[BASELINE] not in wanted:
        wanted.insert(0, BY_NAME[BASELINE])
    chosen, skipped = [], {}
    for c in wanted:
        reason = unavailable_reason(c, cpu)
        if reason:
            skipped[c.name] = reason
        else:
            chosen.append(c)
    chosen.sort(key=lambda c: c.name != BASELINE)
    return chosen, skipped
