"""CPU feature detection on recorded /proc/cpuinfo samples, the forced-off fallback, the
candidate filter and the chooser's rule on made-up timings."""

from pathlib import Path

import pytest

from slimformer.errors import RecipeError, SlimformerError
from slimformer.hardware.cpu_features import detect_cpu, parse_cpuinfo
from slimformer.hardware.peak import measure_peaks
from slimformer.optimize.candidates import BASELINE, select_candidates
from slimformer.optimize.choose import Row, choose, drop_points
from slimformer.optimize.config import OptimizeConfig

SAMPLES = Path(__file__).parent / "data" / "cpuinfo"


def sample(name: str, **kw):
    return parse_cpuinfo((SAMPLES / name).read_text(), **kw)


@pytest.mark.parametrize(
    "name, arch, bf16, int8, cores",
    [
        ("xeon_sapphire_rapids_amx.txt", "x86_64", "amx_bf16", "amx_int8", 2),
        ("xeon_sapphire_rapids_vm_no_amx.txt", "x86_64", "avx512_bf16", "avx512_vnni", 2),
        ("epyc_genoa_zen4.txt", "x86_64", "avx512_bf16", "avx512_vnni", 2),
        ("epyc_turin_zen5_kvm.txt", "x86_64", "avx512_bf16", "avx512_vnni", 2),
        ("xeon_haswell_avx2.txt", "x86_64", None, None, 2),
        ("graviton3_neoverse_v1.txt", "aarch64", "arm_bf16", "arm_i8mm", 2),
    ],
)
def test_parse_recorded_cpuinfo(name, arch, bf16, int8, cores):
    cpu = sample(name)
    assert (cpu.arch, cpu.bf16_unit, cpu.int8_unit, cpu.physical_cores) == (arch, bf16, int8, cores)
    report = cpu.as_report()
    assert report["model_name"] and report["features"] == sorted(cpu.features)


def test_the_name_carries_family_and_model_where_cpuinfo_gives_them():
    # this KVM guest names its Zen 5 "AMD EPYC", as another names its Zen 4
    assert sample("epyc_turin_zen5_kvm.txt").name == "AMD EPYC (family 26, model 2)"
    assert sample("graviton3_neoverse_v1.txt").name == "ARM CPU"
    # a family or model that is not a number is left out, not an error
    garbled = parse_cpuinfo("model name\t: AMD EPYC\ncpu family\t: ?\nmodel\t\t: 2\n")
    assert (garbled.family, garbled.model, garbled.name) == (None, 2, "AMD EPYC")


def test_haswell_has_avx2_but_no_matrix_units():
    cpu = sample("xeon_haswell_avx2.txt")
    assert cpu.has("avx2") and cpu.has("fma") and not cpu.has("avx512f")
    assert cpu.logical_cpus == 4


def test_hidden_features_fall_back_to_the_next_unit():
    cpu = sample("xeon_sapphire_rapids_amx.txt", hidden={"amx_bf16", "amx_int8"})
    assert cpu.bf16_unit == "avx512_bf16" and cpu.int8_unit == "avx512_vnni"
    assert cpu.hidden == {"amx_bf16", "amx_int8"}
    nothing = sample("xeon_sapphire_rapids_amx.txt", hidden={"all"})
    assert nothing.bf16_unit is None and nothing.int8_unit is None and not nothing.features


def test_env_forces_features_off(monkeypatch):
    monkeypatch.setenv("SLIMFORMER_CPU_FEATURES_OFF", "all")
    assert detect_cpu().bf16_unit is None and detect_cpu().int8_unit is None
    monkeypatch.setenv("SLIMFORMER_CPU_FEATURES_OFF", "amx_bf16,warp_drive")
    with pytest.raises(SlimformerError, match="warp_drive"):
        detect_cpu()


def test_candidates_fall_back_without_matrix_units():
    full, skipped = select_candidates(None, sample("xeon_sapphire_rapids_amx.txt"))
    assert full[0].name == BASELINE and not skipped
    plain, skipped = select_candidates(None, sample("xeon_haswell_avx2.txt"))
    names = {c.name for c in plain}
    assert "pytorch-bf16" not in names and "pytorch-int8-static-compiled" not in names
    assert "onnxruntime-int8-dynamic" in names and "pytorch-fp32-compiled" in names
    assert "bf16" in skipped["pytorch-bf16"] and "VNNI" in skipped["pytorch-int8-static-compiled"]
    arm, skipped = select_candidates(None, sample("graviton3_neoverse_v1.txt"))
    assert "pytorch-bf16" in {c.name for c in arm}
    assert "x86" in skipped["pytorch-int8-static-compiled"]


def test_baseline_is_always_measured():
    chosen, _ = select_candidates(["onnxruntime-fp32"], sample("epyc_genoa_zen4.txt"))
    assert [c.name for c in chosen] == [BASELINE, "onnxruntime-fp32"]


def test_config_rejects_unknown_candidates_and_unmeasured_choose_by():
    with pytest.raises(ValueError, match="unknown candidate"):
        OptimizeConfig(candidates=["pytorch-fp64"])
    with pytest.raises(ValueError, match="choose_by"):
        OptimizeConfig(batch_sizes=[1, 8], choose_by="bs32")
    with pytest.raises(RecipeError, match="Unknown optimize candidate"):
        select_candidates(["nope"], sample("epyc_genoa_zen4.txt"))


ROWS = [
    Row(BASELINE, 0.8853, {"bs1": 13.0, "bs32": 200.0}, 87.0),
    Row("fast-but-lossy", 0.8700, {"bs1": 4.0, "bs32": 40.0}, 22.0),
    Row("good", 0.8830, {"bs1": 8.0, "bs32": 70.0}, 22.0),
    Row("batch-friendly", 0.8853, {"bs1": 14.0, "bs32": 60.0}, 87.0),
]


def test_choose_fastest_within_tolerance():
    got = choose(ROWS, BASELINE, max_drop=0.5, choose_by="bs32")
    assert got["name"] == "batch-friendly"
    assert "fast-but-lossy" in got["rejected_for_accuracy"]
    # geometric mean over bs1 and bs32: good = sqrt(8/13 * 70/200) = 0.46 < 0.57
    assert choose(ROWS, BASELINE, max_drop=0.5)["name"] == "good"
    assert choose(ROWS, BASELINE, max_drop=2.0, choose_by="bs32")["name"] == "fast-but-lossy"


def test_choose_ties_go_to_the_smaller_artifact_and_baseline_always_qualifies():
    rows = [
        Row(BASELINE, 0.9, {"bs32": 100.0}, 80.0),
        Row("big", 0.9, {"bs32": 50.0}, 80.0),
        Row("small", 0.9, {"bs32": 50.0}, 20.0),
    ]
    assert choose(rows, BASELINE, 0.0, "bs32")["name"] == "small"
    worse = [Row(BASELINE, 0.9, {"bs32": 100.0}), Row("x", 0.5, {"bs32": 1.0})]
    assert choose(worse, BASELINE, 0.3, "bs32")["name"] == BASELINE
    assert drop_points(0.8853, 0.8830) == pytest.approx(0.23)


def test_measured_peaks_are_positive():
    peaks = measure_peaks(n=128)
    assert set(peaks) == {"fp32", "bf16", "int8"} and all(v > 0 for v in peaks.values())
