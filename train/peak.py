"""The per-worker fp32 peak for MFU, from the CPU's own spec. An upper bound by construction. No TensorFlow.

peak = cores the worker uses x clock x fp32 FLOP per cycle per core, where
- FLOP/cycle comes from the widest vector FMA the cpuinfo flags announce, counting two FMA units per
  core (the most any x86 core has): AVX-512 64, AVX2+FMA 32, AVX 16 (separate add and multiply), SSE 8;
- the clock is the highest `cpuinfo_max_freq` under /sys/devices/system/cpu when a driver that reports
  the boost clock there publishes it, else CEILING_GHZ: the model name's "@ x GHz" (and acpi-cpufreq's
  maximum) is the base clock, which turbo exceeds, so it is not a bound.
A matmul measured on a loaded machine can read far below the truth (MFU 2.5 was the result), which is
why nothing here is measured: an MFU above 1 against this peak means the FLOP count is wrong.
"""
from __future__ import annotations

import glob
import os
import re

CEILING_GHZ = 6.2  # no x86 CPU ships with a higher boost clock (Core i9-14900KS: 6.2 GHz)
# cpufreq drivers whose cpuinfo_max_freq is the highest boost clock (acpi-cpufreq's is the base).
BOOST_REPORTING_DRIVERS = ("intel_pstate", "intel_cpufreq", "amd-pstate", "amd-pstate-epp", "cppc_cpufreq")
# (flags that must all be present, fp32 FLOP per cycle per core, why), widest first.
VECTOR_UNITS: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (("avx512f",), 64, "AVX-512: 2 FMA units x 16 lanes x 2"),
    (("avx2", "fma"), 32, "AVX2+FMA: 2 FMA units x 8 lanes x 2"),
    (("avx",), 16, "AVX without FMA: 8-lane add + 8-lane multiply"),
    (("sse",), 8, "SSE: 4-lane add + 4-lane multiply"),
    (("sve",), 64, "SVE: at most 2 x 512-bit FMA"),
    (("asimd",), 32, "NEON: at most 4 x 128-bit FMA"),
)
UNKNOWN_FLOP_PER_CYCLE = 64  # no flag recognised: the widest any core does


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, feature flags) of the first processor listed in /proc/cpuinfo text."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def flop_per_cycle(flags: set[str]) -> tuple[int, str]:
    """fp32 FLOP per cycle per core, upper bound for the widest vector unit the flags announce."""
    for needed, flop, why in VECTOR_UNITS:
        if all(f in flags for f in needed):
            return flop, why
    return UNKNOWN_FLOP_PER_CYCLE, "no known vector flag: the widest any core does"


def max_clock_ghz(cpufreq_root: str = "/sys/devices/system/cpu") -> tuple[float, str]:
    """(clock in GHz no core can exceed, where it came from)."""
    driver = _read(os.path.join(cpufreq_root, "cpu0", "cpufreq", "scaling_driver"))
    khz = [float(v) for p in glob.glob(os.path.join(cpufreq_root, "cpu[0-9]*", "cpufreq", "cpuinfo_max_freq"))
           if (v := _read(p)) and v.replace(".", "", 1).isdigit()]
    if khz and driver in BOOST_REPORTING_DRIVERS:
        return max(khz) / 1e6, f"cpuinfo_max_freq ({driver}, boost included)"
    seen = f"{driver} reports {max(khz) / 1e6:.2f} GHz, a base clock" if khz else "no cpufreq"
    return CEILING_GHZ, f"{seen}: assumed {CEILING_GHZ} GHz, above any x86 CPU's boost clock"


def cpu_peak_gflops(threads: int, cpuinfo_path: str = "/proc/cpuinfo",
                    cpufreq_root: str = "/sys/devices/system/cpu") -> tuple[float, str]:
    """(peak fp32 GFLOP/s of a worker using `threads` cores, how it was derived)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    model, flags = parse_cpuinfo(_read(cpuinfo_path) or "")
    flop, unit = flop_per_cycle(flags)
    ghz, clock = max_clock_ghz(cpufreq_root)
    stated = re.search(r"@\s*([\d.]+)\s*GHz", model)
    name = f"{model or 'unknown CPU'}" + (" (its @ clock is the base clock)" if stated else "")
    return threads * ghz * flop, (f"spec upper bound: {threads} cores x {ghz:.2f} GHz [{clock}] x {flop} "
                                  f"fp32 FLOP/cycle [{unit}]; {name}")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None
