"""The CPU's matrix and vector units, read from ``/proc/cpuinfo`` (x86 ``flags``, ARM
``Features``), so reports name what the numbers were measured on and the optimizer knows which
candidates can reach fast kernels. ``SLIMFORMER_CPU_FEATURES_OFF`` (comma list, or ``all``) hides
features, to test and to force the fallback path on a CPU that has them."""

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from slimformer.errors import SlimformerError

OFF_ENV = "SLIMFORMER_CPU_FEATURES_OFF"

# slimformer's name -> the names the kernel prints (x86 flags or ARM Features).
FEATURE_FLAGS: dict[str, tuple[str, ...]] = {
    "amx_bf16": ("amx_bf16",),
    "amx_int8": ("amx_int8",),
    "avx512_bf16": ("avx512_bf16",),
    "avx512_fp16": ("avx512_fp16",),
    "avx512_vnni": ("avx512_vnni",),
    "avx_vnni": ("avx_vnni",),
    "avx512f": ("avx512f",),
    "avx2": ("avx2",),
    "fma": ("fma",),
    "arm_bf16": ("bf16",),
    "arm_i8mm": ("i8mm",),
    "arm_dotprod": ("asimddp",),
    "arm_sve": ("sve",),
}
# Features that give a matrix/dot-product unit per precision, fastest first.
BF16_UNITS = ("amx_bf16", "avx512_bf16", "arm_bf16")
INT8_UNITS = ("amx_int8", "avx512_vnni", "avx_vnni", "arm_i8mm", "arm_dotprod")


@dataclass(frozen=True)
class CpuFeatures:
    model_name: str
    arch: str
    logical_cpus: int
    physical_cores: int
    features: frozenset[str] = field(default_factory=frozenset)
    hidden: frozenset[str] = field(default_factory=frozenset)
    # x86 ``cpu family`` / ``model``: a KVM guest may name every EPYC generation "AMD EPYC"
    family: int | None = None
    model: int | None = None

    @property
    def name(self) -> str:
        """The model name, with family and model where cpuinfo gives them."""
        if self.family is None or self.model is None:
            return self.model_name
        return f"{self.model_name} (family {self.family}, model {self.model})"

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def bf16_unit(self) -> str | None:
        """The fastest bf16 matrix unit, or None (bf16 would be emulated: slower than fp32)."""
        return next((f for f in BF16_UNITS if self.has(f)), None)

    @property
    def int8_unit(self) -> str | None:
        return next((f for f in INT8_UNITS if self.has(f)), None)

    def as_report(self) -> dict:
        out = asdict(self)
        out["features"] = sorted(self.features)
        out["hidden"] = sorted(self.hidden)
        out["bf16_unit"] = self.bf16_unit
        out["int8_unit"] = self.int8_unit
        out["torch_threads"] = torch.get_num_threads()
        out["torch_capability"] = torch.backends.cpu.get_cpu_capability()
        return out


def _features_from_line(line: str) -> set[str]:
    names = set(line.split(":", 1)[1].split())
    return {ours for ours, theirs in FEATURE_FLAGS.items() if names.intersection(theirs)}


def parse_cpuinfo(
    text: str, arch: str | None = None, hidden: set[str] | None = None
) -> CpuFeatures:
    """Parse ``/proc/cpuinfo`` text (x86 or ARM). ``hidden``: features to treat as absent."""
    model_name, features, processors, cores = "", set(), 0, set()
    family = model_number = None
    physical_id = core_id = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            processors += 1
        elif key == "model name" and not model_name:
            model_name = value
        elif key == "cpu family" and family is None and value.isdigit():
            family = int(value)
        elif key == "model" and model_number is None and value.isdigit():
            model_number = int(value)
        elif key in ("flags", "Features") and not features:
            features = _features_from_line(line)
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
            cores.add((physical_id, core_id))
    arch = arch or ("aarch64" if any(f.startswith("arm_") for f in features) else "x86_64")
    if not model_name and arch == "aarch64":
        model_name = "ARM CPU"
    hidden = _expand_hidden(hidden or set())
    return CpuFeatures(
        model_name=model_name or platform.processor() or arch,
        arch=arch,
        logical_cpus=processors or 1,
        physical_cores=len(cores) or processors or 1,
        features=frozenset(features - hidden),
        hidden=frozenset(hidden & features),
        family=family,
        model=model_number,
    )


def _expand_hidden(hidden: set[str]) -> set[str]:
    if "all" in hidden:
        return set(FEATURE_FLAGS)
    unknown = hidden - set(FEATURE_FLAGS)
    if unknown:
        raise SlimformerError(
            f"{OFF_ENV} names unknown CPU features {sorted(unknown)}; known: "
            f"{', '.join(FEATURE_FLAGS)} (or 'all')."
        )
    return hidden


def hidden_from_env() -> set[str]:
    return {f.strip() for f in os.environ.get(OFF_ENV, "").split(",") if f.strip()}


def detect_cpu() -> CpuFeatures:
    """This machine's features, minus those hidden by ``SLIMFORMER_CPU_FEATURES_OFF``."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    return parse_cpuinfo(text, platform.machine() or None, hidden_from_env())


def cpu_name() -> str:
    """Name the CPU beside every timing: numbers from different machines are not comparable."""
    return detect_cpu().name
