"""Sync trainer overhead and 2-worker scaling against plain Keras, the machine's ceiling and Horovod's own example.

    .venv/bin/python benchmarks/sync_overhead.py [--rounds 3] [--width 0.5] [--steps 30] [--out FILE.json]

Each round runs, one after another (alternated, so drift hits all alike), every process with one intra-op
thread and its own core (taskset):
  plain    plain tf.keras fit, core 0                                 (benchmarks/plain_keras.py)
  hvd1     the sync trainer under `horovodrun --gloo -np 1`, core 0
  hvd2     the sync trainer under `horovodrun --gloo -np 2`, rank r on core r
  ceiling  two plain runs at once, on cores 0 and 1: what this machine gives two workers
  peer1/2  Horovod's Keras synthetic benchmark with cnn11, Horovod's defaults (benchmarks/horovod_peer.py)
Then one more hvd1 and hvd2 run each with HOROVOD_TIMELINE, broken down per step (compare/timeline.py).
Prints the medians, the per-step breakdown and, last, the ratios with their goals:
hvd1/plain >= 0.98, hvd2/ceiling >= 0.90, hvd2/peer2 >= 1.10. The host's load average is sampled
throughout and printed with the result: on a loaded machine the ratios are not evidence.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from compare.launch import cpu_model  # noqa: E402  (no TensorFlow)
from compare.timeline import breakdown, load_events  # noqa: E402  (no TensorFlow)
from train.record import git_state  # noqa: E402  (no TensorFlow)

PY = sys.executable
HOROVODRUN = str(Path(PY).parent / "horovodrun")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), "TF_NUM_INTEROP_THREADS": "2",
       "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
# Each Horovod rank pins itself to the core of its local rank.
PIN_RANK = 'exec taskset -c "$HOROVOD_LOCAL_RANK" "$@"'
GOALS = {"hvd1/plain": 0.98, "hvd2/ceiling": 0.90, "hvd2/peer2": 1.10}


def plain(out: str, core: int, args) -> subprocess.Popen:
    cmd = ["taskset", "-c", str(core), PY, str(ROOT / "benchmarks/plain_keras.py"), "--out", out,
           "--width", str(args.width), "--steps", str(args.steps), "--per-worker-batch", str(args.batch)]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL)


def horovod(np_: int, program: list[str], env: dict | None = None) -> subprocess.Popen:
    cmd = [HOROVODRUN, "--gloo", "-np", str(np_), "-H", f"localhost:{np_}", "sh", "-c", PIN_RANK, "pin", *program]
    return subprocess.Popen(cmd, cwd=ROOT, env=env or ENV, stdout=subprocess.DEVNULL)


def sync(np_: int, results: str, args, env: dict | None = None) -> subprocess.Popen:
    return horovod(np_, [PY, "-m", "train.sync_allreduce", "--width", str(args.width), "--per-worker-batch",
                         str(args.batch), "--steps-per-epoch", str(args.steps), "--intra-op-threads", "1",
                         "--results-dir", results, "--study", f"np{np_}"], env)


def peer(np_: int, out: str, args) -> subprocess.Popen:
    # Horovod's example: epochs of num_batches_per_iter steps, the first skipped; same steps in all.
    per_iter = max(1, args.steps // 5)
    return horovod(np_, [PY, str(ROOT / "benchmarks/horovod_peer.py"), "--out", out, "--width", str(args.width),
                         "--batch-size", str(args.batch), "--num-batches-per-iter", str(per_iter),
                         "--num-iters", str(1 + args.steps // per_iter), "--intra-op-threads", "1"])


def last(path: str) -> dict:
    return json.loads(Path(path).read_text().splitlines()[-1])


def wait_all(procs: list[subprocess.Popen], what: str) -> None:
    codes = [p.wait() for p in procs]
    if any(codes):
        sys.exit(f"sync_overhead: {what} failed with exit codes {codes}")


class LoadSampler(threading.Thread):
    """The 1-minute load average every few seconds while the benchmark runs."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default="", help="also write the result as JSON here")
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("sync_overhead: error: the benchmark needs 2 cores", file=sys.stderr)
        return 2
    sha, dirty = git_state()  # the conditions go with the numbers
    tmp = tempfile.mkdtemp(prefix="sync-overhead-")
    load = LoadSampler()
    load.start()
    rates: dict[str, list[float]] = {k: [] for k in ("plain", "hvd1", "hvd2", "ceiling", "peer1", "peer2")}
    for r in range(args.rounds):
        out = f"{tmp}/plain.jsonl"
        wait_all([plain(out, 0, args)], "plain")
        rates["plain"].append(last(out)["images_per_sec"])
        for np_ in (1, 2):
            wait_all([sync(np_, tmp, args)], f"hvd{np_}")
            rates[f"hvd{np_}"].append(last(f"{tmp}/np{np_}/runs.jsonl")["images_per_sec"])
        wait_all([plain(f"{tmp}/ceiling{c}.jsonl", c, args) for c in (0, 1)], "ceiling")
        rates["ceiling"].append(sum(last(f"{tmp}/ceiling{c}.jsonl")["images_per_sec"] for c in (0, 1)))
        for np_ in (1, 2):
            wait_all([peer(np_, f"{tmp}/peer{np_}.jsonl", args)], f"peer{np_}")
            rates[f"peer{np_}"].append(last(f"{tmp}/peer{np_}.jsonl")["images_per_sec"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
    timelines = {}
    for np_ in (1, 2):
        path = f"{tmp}/timeline-np{np_}.json"
        wait_all([sync(np_, f"{tmp}/tl", args, env={**ENV, "HOROVOD_TIMELINE": path})], f"timeline np{np_}")
        timelines[f"hvd{np_}"] = breakdown(path) if np_ > 1 else _np1_breakdown(path)
    load.stop.set()
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {"hvd1/plain": med["hvd1"] / med["plain"], "hvd2/ceiling": med["hvd2"] / med["ceiling"],
              "hvd2/peer2": med["hvd2"] / med["peer2"], "hvd2/hvd1": med["hvd2"] / med["hvd1"],
              "peer2/peer1": med["peer2"] / med["peer1"]}
    print(f"\ncnn11 width {args.width}, 32x32 synthetic, batch {args.batch}/worker, 1 thread/worker, "
          f"{args.steps} steps, {args.rounds} rounds; medians, images/sec:")
    for k, v in med.items():
        print(f"  {k:8s} {v:8.1f}   (runs: {', '.join(f'{x:.1f}' for x in rates[k])})")
    print("\nper-step breakdown from a Horovod timeline (median seconds; compare/timeline.py):")
    for name, b in timelines.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in b.items()))
    loads = load.samples or [os.getloadavg()[0]]
    print(f"\nhost load average (1 min) during the benchmark: mean {statistics.fmean(loads):.2f}, "
          f"max {max(loads):.2f} on {os.cpu_count()} cores")
    for k, v in ratios.items():
        goal = GOALS.get(k)
        verdict = "" if goal is None else f"   (goal >= {goal:.2f}: {'meets' if v >= goal else 'misses'})"
        print(f"ratio {k:13s} {v:.3f}{verdict}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
            "git_sha": sha, "dirty": dirty, "cpu": cpu_model(), "cores": os.cpu_count(),
            "versions": {m: importlib.metadata.version(m) for m in ("tensorflow-cpu", "horovod")},
            "command": " ".join(sys.argv), "args": vars(args), "rates": rates, "medians": med,
            "ratios": ratios, "goals": GOALS, "timeline": timelines,
            "load_avg": {"mean": statistics.fmean(loads), "max": max(loads), "samples": len(loads)}}, indent=1))
    return 0


def _np1_breakdown(path: str) -> dict:
    """np=1: Horovod's DistributedOptimizer hands no gradient to Horovod at size 1 (the timeline holds only
    the broadcasts at start and the BN/metric averages), so there is no step to break down; count what is there."""
    events = load_events(path)
    ops = [e["name"] for e in events if e.get("ph") == "B" and e.get("name", "").startswith("NEGOTIATE_")]
    return {"note": "no gradient allreduce at size 1", **{n.lower(): ops.count(n) for n in sorted(set(ops))}}


if __name__ == "__main__":
    sys.exit(main())
