"""train/peak.py: the spec peak from hand-written cpuinfo texts and cpufreq trees (no TensorFlow)."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from train import peak

EPYC_KVM = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
cpu MHz\t\t: 2445.424
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2
processor\t: 1
flags\t\t: fpu sse
"""
XEON = """processor : 0
model name : Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz
flags : fpu sse sse2 avx avx2 fma avx512f avx512dq
"""
OLD = "model name : Intel(R) Core(TM)2 Duo CPU E8400 @ 3.00GHz\nflags : fpu sse sse2 ssse3\n"
SANDY = "model name : Intel(R) Core(TM) i7-2600 CPU @ 3.40GHz\nflags : sse sse2 avx\n"
ARM = "processor : 0\nBogoMIPS : 50.00\nFeatures : fp asimd evtstrm aes crc32\n"


@pytest.mark.parametrize("text, model, flop", [
    (EPYC_KVM, "AMD EPYC", 32), (XEON, "Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz", 64),
    (OLD, "Intel(R) Core(TM)2 Duo CPU E8400 @ 3.00GHz", 8), (SANDY, "Intel(R) Core(TM) i7-2600 CPU @ 3.40GHz", 16),
    (ARM, "", 32), ("", "", peak.UNKNOWN_FLOP_PER_CYCLE),
])
def test_cpuinfo_flags_give_flop_per_cycle(text, model, flop):
    name, flags = peak.parse_cpuinfo(text)
    assert name == model
    assert peak.flop_per_cycle(flags)[0] == flop


def _tree(root, driver, khz):
    for i, f in enumerate(khz):
        d = root / f"cpu{i}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "cpuinfo_max_freq").write_text(f"{f}\n")
        (d / "scaling_driver").write_text(f"{driver}\n")
    return str(root)


def test_boost_clock_from_cpufreq_when_the_driver_reports_boost(tmp_path):
    root = _tree(tmp_path, "amd-pstate", [3_500_000, 3_700_000])
    assert peak.max_clock_ghz(root)[0] == pytest.approx(3.7)
    (tmp_path / "cpuinfo").write_text(EPYC_KVM)
    gflops, source = peak.cpu_peak_gflops(2, str(tmp_path / "cpuinfo"), root)
    assert gflops == pytest.approx(2 * 3.7 * 32) and "amd-pstate" in source and "2 cores" in source


def test_base_clocks_are_not_bounds(tmp_path):
    # acpi-cpufreq's maximum and the model name's "@ 2.30GHz" are base clocks: turbo runs above them.
    root = _tree(tmp_path, "acpi-cpufreq", [2_301_000])
    ghz, source = peak.max_clock_ghz(root)
    assert ghz == peak.CEILING_GHZ and "base clock" in source
    (tmp_path / "cpuinfo").write_text(XEON)
    gflops, source = peak.cpu_peak_gflops(1, str(tmp_path / "cpuinfo"), root)
    assert gflops == pytest.approx(peak.CEILING_GHZ * 64) and "@ clock is the base clock" in source


def test_no_cpufreq_no_clock_gives_the_ceiling(tmp_path):
    (tmp_path / "cpuinfo").write_text(EPYC_KVM)
    gflops, source = peak.cpu_peak_gflops(2, str(tmp_path / "cpuinfo"), str(tmp_path / "nothing"))
    assert gflops == pytest.approx(2 * peak.CEILING_GHZ * 32) and "no cpufreq" in source
    with pytest.raises(ValueError):
        peak.cpu_peak_gflops(0)


def test_this_machine_bounds_what_was_achieved_here():
    # A 2-thread 2048² fp32 matmul reached 193 GFLOP/s on this VM: the bound must sit above it.
    gflops, _ = peak.cpu_peak_gflops(2)
    assert gflops > 193


def test_peak_and_record_import_no_tensorflow():
    code = "import sys, train.peak, train.record, train.config; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
