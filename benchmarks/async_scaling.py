"""Async scaling on this machine (a script, not a test): cnn11 32x32 synthetic, pinned with taskset.

Side by side in one run, alternated `--repeats` times (the machine is noisy; medians are quoted):
  async-1w      1 worker + 1 PS + chief, the whole cluster on core 0
  ceiling       two independent async-1w clusters at once, on core 0 and core 1 (their sum: the
                machine's own parallel ceiling for this arm; each 1-core cluster also carries its chief
                and PS, so async-2w can beat it)
  async-2w      2 workers + 1 PS + chief on cores 0,1
  sync-1w/2w    Horovod (Gloo) np=1 on core 0 and np=2 on cores 0,1, when Horovod is installed
Every figure is a record's images/sec (optimizer iterations over wall time after warm-up). Ratios last.

    .venv/bin/python benchmarks/async_scaling.py --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from train import record  # noqa: E402


def trainer_args(a, results: str, tag: str) -> list[str]:
    return ["--dataset", "synthetic", "--image-size", "32", "--width", str(a.width),
            "--per-worker-batch", str(a.batch), "--epochs", str(a.epochs), "--steps-per-epoch", str(a.steps),
            "--warmup-steps", str(a.warmup), "--intra-op-threads", "1",
            "--results-dir", results, "--study", "bench", "--run-id", tag]


def async_cmd(a, cores: str, workers: int, results: str, tag: str) -> list[str]:
    return ["taskset", "-c", cores, sys.executable, "-m", "train.async_ps", "--workers", str(workers),
            "--ps", "1", *trainer_args(a, results, tag)]


def sync_cmd(a, cores: str, np_: int, results: str, tag: str) -> list[str]:
    horovodrun = str(Path(sys.executable).with_name("horovodrun"))
    return ["taskset", "-c", cores, horovodrun, "--gloo", "-np", str(np_), "-H", f"localhost:{np_}",
            sys.executable, "-m", "train.sync_allreduce", *trainer_args(a, results, tag)]


def launch(cmds: list[list[str]], env: dict) -> None:
    """Start all commands at once, wait for all; a failure stops the benchmark."""
    procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    for c, p in zip(cmds, procs):
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"async_scaling: {' '.join(c[:8])}... failed ({p.returncode}):\n{err[-2000:]}")


def ips(results: str, tag: str) -> tuple[float, dict]:
    recs, _ = record.read_records(os.path.join(results, "bench", "runs.jsonl"))
    (rec,) = [r for r in recs if r.get("run_id") == tag]
    return rec["images_per_sec"], rec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=15, help="scheduled steps per epoch")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-sync", action="store_true", help="skip the Horovod runs")
    p.add_argument("--keep", default="", help="keep the records in this results dir")
    a = p.parse_args()
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        sys.exit("async_scaling: needs 2 cores and taskset")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    sync = not a.no_sync and Path(sys.executable).with_name("horovodrun").exists()
    results = a.keep or tempfile.mkdtemp(prefix="async-scaling-")
    figures: dict[str, list[float]] = {}
    staleness: list[float] = []
    for r in range(a.repeats):
        t = f"r{r}-{int(time.time())}"
        runs = {
            "async-1w": [async_cmd(a, "0", 1, results, f"{t}-a1")],
            "ceiling": [async_cmd(a, "0", 1, results, f"{t}-c0"), async_cmd(a, "1", 1, results, f"{t}-c1")],
            "async-2w": [async_cmd(a, "0,1", 2, results, f"{t}-a2")],
        }
        if sync:
            runs["sync-1w"] = [sync_cmd(a, "0", 1, results, f"{t}-s1")]
            runs["sync-2w"] = [sync_cmd(a, "0,1", 2, results, f"{t}-s2")]
        for name, cmds in runs.items():
            launch(cmds, env)
            tags = [c[c.index("--run-id") + 1] for c in cmds]
            values = [ips(results, tag) for tag in tags]
            total = sum(v for v, _ in values)
            figures.setdefault(name, []).append(total)
            if name == "async-2w":
                staleness.append(values[0][1]["staleness"]["mean"])
            print(f"repeat {r + 1}/{a.repeats} {name:9s} {total:8.1f} img/s", flush=True)

    med = {k: statistics.median(v) for k, v in figures.items()}
    runs = json.dumps({k: [round(x, 1) for x in v] for k, v in figures.items()})
    print(f"\ncnn11 width {a.width}, 32x32 synthetic, batch {a.batch}/worker, 1 intra-op thread per process, "
          f"{a.repeats} repeats, medians (all runs: {runs})")
    for k, v in med.items():
        print(f"  {k:9s} {v:8.1f} img/s")
    print(f"  async-2w staleness mean (median over repeats): {statistics.median(staleness):.2f}")
    print("ratios:")
    print(f"  async-2w / async-1w  (speed-up)            {med['async-2w'] / med['async-1w']:.2f}")
    print(f"  async-2w / ceiling   (of 2 x 1-core)       {med['async-2w'] / med['ceiling']:.2f}")
    if sync:
        print(f"  sync-2w  / sync-1w   (speed-up)            {med['sync-2w'] / med['sync-1w']:.2f}")
        print(f"  async-2w / sync-2w                         {med['async-2w'] / med['sync-2w']:.2f}")
    if not a.keep:
        shutil.rmtree(results, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
