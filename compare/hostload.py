"""Host load while a study runs: results/<study>/load.jsonl, one JSON line a sample. No TensorFlow.

    {"t": iso, "loadavg1": float, "steal_frac": float, "cpu_busy_frac": float, "host": str}

The pipeline runs a Sampler thread while a study runs; a SLURM job runs the same sampler as a program
(slurm/job-env.sh), until it is stopped:  python -m compare.hostload --out results/STUDY/load.jsonl

loadavg1 from /proc/loadavg; steal and busy fractions of all CPU time since the previous sample, from the
"cpu" line of /proc/stat (busy = everything but idle, iowait and steal). The report prints these.
"""
from __future__ import annotations

import json
import math
import argparse
import os
import signal
import socket
import statistics
import sys
import threading
import time

from train.record import append_json_line, now_iso


def _cpu_times() -> tuple[int, int, int] | None:
    """(total, idle incl. iowait, steal) jiffies of all CPUs; None where /proc/stat is missing."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            parts = f.readline().split()
    except OSError:
        return None
    vals = [int(v) for v in parts[1:]]
    vals += [0] * (8 - len(vals))
    total = sum(vals[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total, vals[3] + vals[4], vals[7]


def _loadavg1() -> float:
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return math.nan


def _busy_steal(a: tuple[int, int, int] | None, b: tuple[int, int, int] | None) -> tuple[float, float]:
    """(busy, steal) fractions of the CPUs between two _cpu_times() readings; NaN when they cannot tell."""
    if not a or not b or b[0] <= a[0]:
        return math.nan, math.nan
    dt = b[0] - a[0]
    return (dt - (b[1] - a[1]) - (b[2] - a[2])) / dt, (b[2] - a[2]) / dt


class Sampler:
    """A daemon thread appending a sample to `path` every `interval` s (and one at stop)."""

    def __init__(self, path: str, interval: float = 15.0) -> None:
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hostload", daemon=True)
        self._last = _cpu_times()

    def sample(self) -> dict:
        now = _cpu_times()
        busy, steal = _busy_steal(self._last, now)
        self._last = now
        row = {"t": now_iso(), "loadavg1": _loadavg1(), "steal_frac": steal, "cpu_busy_frac": busy,
               "host": socket.gethostname()}
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        append_json_line(self.path, row)
        return row

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


def wait_quiet(max_busy: float = 0.25, window_s: float = 3.0, timeout_s: float = 120.0) -> dict:
    """Wait until the CPUs were busy at most `max_busy` over `window_s` (e.g. the processes of a finished run
    still exiting), at most `timeout_s`. What was found, for the measurement's own record."""
    t0 = time.monotonic()
    while True:
        a = _cpu_times()
        time.sleep(window_s)
        busy, _ = _busy_steal(a, _cpu_times())
        if math.isnan(busy) or busy <= max_busy or time.monotonic() - t0 >= timeout_s:
            break  # NaN: no /proc/stat, nothing to wait for
    return {"cpu_busy_frac": None if math.isnan(busy) else busy, "quiet": not busy > max_busy,
            "max_busy": max_busy, "waited_s": time.monotonic() - t0, "loadavg1": _loadavg1(), "t": now_iso()}


def read(path: str) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("loadavg1"), (int, float)):
                    rows.append(row)
    except OSError:
        pass
    return rows


def summary(path: str, cores: int | None = None) -> str:
    """One sentence for the report's conditions, from the log itself (or that there is none)."""
    rows = read(path)
    if not rows:
        return "host load not recorded (no load.jsonl)"
    loads = [r["loadavg1"] for r in rows]
    steal = [r["steal_frac"] for r in rows if isinstance(r.get("steal_frac"), (int, float))]
    busy = [r["cpu_busy_frac"] for r in rows if isinstance(r.get("cpu_busy_frac"), (int, float))]
    out = (f"{len(rows)} samples from {rows[0]['t']} to {rows[-1]['t']}: 1-minute load average median "
           f"{statistics.median(loads):.2f} (range {min(loads):.2f}–{max(loads):.2f})"
           + (f" on {cores} cores" if cores else ""))
    if busy:
        out += f"; CPU busy {statistics.median(busy):.0%} median (max {max(busy):.0%})"
    if steal:
        out += f"; CPU steal {statistics.median(steal):.1%} median (max {max(steal):.1%})"
    return out


def load_path(study_dir: str) -> str:
    return os.path.join(study_dir, "load.jsonl")


def main(argv: list[str] | None = None) -> int:
    """Sample every --interval s into --out until SIGTERM or SIGINT, then take a last sample."""
    class OneLine(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # bad input: one line, exit 2
            print(f"compare.hostload: error: {message}", file=sys.stderr)
            sys.exit(2)

    ap = OneLine(prog="compare.hostload", description=main.__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval", type=float, default=15.0)
    args = ap.parse_args(argv)
    if not args.interval > 0:
        ap.error(f"--interval must be > 0, got {args.interval}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Sampler(args.out, args.interval):
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
