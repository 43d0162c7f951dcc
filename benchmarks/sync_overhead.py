"""Sync trainer overhead and 2-worker speedup, measured side by side in one run on pinned cores.

    .venv/bin/python benchmarks/sync_overhead.py [--rounds 3] [--width 0.5] [--steps 30]

Each round runs, one after another (A/B alternated, so drift hits all alike), every process with one
intra-op thread and its own core (taskset):
  plain    plain tf.keras fit, core 0                        (benchmarks/plain_keras.py)
  hvd1     the sync trainer under `horovodrun -np 1`, core 0
  hvd2     the sync trainer under `horovodrun --gloo -np 2`, rank r on core r
  ceiling  two plain runs at once, on cores 0 and 1: what this machine gives two workers
and prints the medians and, last, the ratios: hvd1/plain (goal >= 0.97), hvd2/hvd1 (goal >= 1.85)
and hvd2/ceiling.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HOROVODRUN = str(Path(PY).parent / "horovodrun")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT),
       "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
# Each Horovod rank pins itself to the core of its local rank.
PIN_RANK = 'exec taskset -c "$HOROVOD_LOCAL_RANK" "$@"'


def plain(out: str, core: int, args) -> subprocess.Popen:
    cmd = ["taskset", "-c", str(core), PY, str(ROOT / "benchmarks/plain_keras.py"), "--out", out,
           "--width", str(args.width), "--steps", str(args.steps), "--per-worker-batch", str(args.batch)]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL)


def sync(np_: int, results: str, args) -> subprocess.Popen:
    cmd = [HOROVODRUN, "--gloo", "-np", str(np_), "-H", f"localhost:{np_}", "sh", "-c", PIN_RANK, "pin",
           PY, "-m", "train.sync_allreduce", "--width", str(args.width), "--per-worker-batch",
           str(args.batch), "--steps-per-epoch", str(args.steps), "--intra-op-threads", "1",
           "--results-dir", results, "--study", f"np{np_}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL)


def last_rate(path: str) -> float:
    return json.loads(Path(path).read_text().splitlines()[-1])["images_per_sec"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("benchmark needs 2 cores")
    tmp = tempfile.mkdtemp(prefix="sync-overhead-")
    rates: dict[str, list[float]] = {"plain": [], "hvd1": [], "hvd2": [], "ceiling": []}
    for r in range(args.rounds):
        out = f"{tmp}/plain.jsonl"
        assert plain(out, 0, args).wait() == 0
        rates["plain"].append(last_rate(out))
        for np_ in (1, 2):
            assert sync(np_, tmp, args).wait() == 0
            rates[f"hvd{np_}"].append(last_rate(f"{tmp}/np{np_}/runs.jsonl"))
        pair = [plain(f"{tmp}/ceiling{c}.jsonl", c, args) for c in (0, 1)]
        assert [p.wait() for p in pair] == [0, 0]
        rates["ceiling"].append(sum(last_rate(f"{tmp}/ceiling{c}.jsonl") for c in (0, 1)))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\ncnn11 width {args.width}, 32x32 synthetic, batch {args.batch}/worker, 1 thread/worker, "
          f"{args.steps} steps, {args.rounds} rounds; medians, images/sec:")
    for k, v in med.items():
        print(f"  {k:8s} {v:8.1f}   (runs: {', '.join(f'{x:.1f}' for x in rates[k])})")
    print(f"ratio hvd1/plain    {med['hvd1'] / med['plain']:.3f}   (goal >= 0.97)")
    print(f"speedup hvd2/hvd1   {med['hvd2'] / med['hvd1']:.3f}   (goal >= 1.85)")
    print(f"hvd2/ceiling        {med['hvd2'] / med['ceiling']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
