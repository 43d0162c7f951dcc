"""`python -m compare run`: the sweep. Every configuration is its own process through the real launcher.

sync:  horovodrun --gloo -np P -H localhost:P python -m compare.pin --cores ... -- python -m train.sync_allreduce ...
async: taskset -c CORES python -m train.async_ps --workers P --ps S ...
ceiling (the machine's parallel ceiling): P independent 1-worker sync runs side by side, one per core.
Once per study, first: the Horovod allreduce microbenchmark at np=2 (allreduce.json), for the local
profile.

Resumable: a run id already in runs.jsonl with status "ok" is skipped. A failed run is appended with
status "failed" and its error, and the sweep goes on. No TensorFlow import here.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from train import record
from train.record import append_record, now_iso, read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class SweepConfig:
    study: str = "local"
    results_dir: str = "results"
    modes: tuple[str, ...] = ("sync", "async")
    workers: tuple[int, ...] = (1, 2)
    repeats: int = 3
    heads: tuple[str, ...] = ("gap",)
    image_sizes: tuple[int, ...] = (32,)
    compressions: tuple[str, ...] = ("none",)
    width: float = 0.25
    per_worker_batch: int = 64
    epochs: int = 1
    steps_per_epoch: int = 30
    warmup_steps: int = 5
    dataset: str = "synthetic"
    lr: float = 0.0  # base learning rate per worker passed to the trainers (0: the trainers' default)
    seed_per_repeat: bool = False  # --seed REPEAT: repeats are independent seeds (the convergence study)
    compress_single_worker: bool = True  # False: no compressed 1-worker runs (nothing goes on the wire)
    ps: int = 1
    intra_op_threads: int = 1
    ceiling: bool = True
    bench: bool = True
    timeout: float = 600.0
    python: str = sys.executable

    @property
    def study_dir(self) -> str:
        return os.path.join(self.results_dir, self.study)

    @property
    def runs_path(self) -> str:
        return record.runs_path(self.results_dir, self.study)


@dataclass(frozen=True)
class Run:
    """One planned configuration (kind: main | ceiling)."""
    kind: str
    mode: str
    workers: int
    head: str
    image_size: int
    compression: str
    repeat: int

    def run_id(self, i: int | None = None) -> str:
        base = f"{self.mode}-p{self.workers}-{self.head}-s{self.image_size}-{self.compression}-r{self.repeat}"
        if self.kind == "ceiling":
            return f"ceiling-p{self.workers}-{self.head}-s{self.image_size}-r{self.repeat}-c{i}"
        return base

    def run_ids(self) -> list[str]:
        return [self.run_id(i) for i in range(self.workers)] if self.kind == "ceiling" else [self.run_id()]

    def label(self) -> str:
        if self.kind == "ceiling":
            return f"ceiling {self.workers}x1 {self.head} {self.image_size}px r{self.repeat}"
        return f"{self.mode} p={self.workers} {self.head} {self.image_size}px {self.compression} r{self.repeat}"


def cores_available() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def plan(cfg: SweepConfig) -> list[Run]:
    """Repeat-major order, so slow drift of a noisy machine spreads over every configuration."""
    runs: list[Run] = []
    ncores = len(cores_available())
    for rep in range(cfg.repeats):
        for head, size, comp in itertools.product(cfg.heads, cfg.image_sizes, cfg.compressions):
            for p in cfg.workers:
                for mode in cfg.modes:
                    if mode == "async" and comp != "none":
                        continue  # the PS strategy pushes fp32 gradients; train.async_ps refuses fp16
                    if p == 1 and comp != "none" and not cfg.compress_single_worker:
                        continue
                    runs.append(Run("main", mode, p, head, size, comp, rep))
                if cfg.ceiling and p > 1 and p <= ncores and comp == cfg.compressions[0]:
                    runs.append(Run("ceiling", "sync", p, head, size, "none", rep))
    return runs


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    env.update({
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # A process pinned to one core would default to one inter-op thread, and a PS cluster
        # deadlocks with one (verified.md): every trainer gets two, whatever its affinity.
        "TF_NUM_INTEROP_THREADS": "2",
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
        "PYTHONPATH": ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
    })
    return env


def _horovodrun(cfg: SweepConfig) -> str:
    here = os.path.join(os.path.dirname(os.path.abspath(cfg.python)), "horovodrun")
    return here if os.path.exists(here) else (shutil.which("horovodrun") or "horovodrun")


def trainer_flags(cfg: SweepConfig, run: Run, run_id: str, role: str = "main", copies: int = 1) -> list[str]:
    return ["--dataset", cfg.dataset, "--head", run.head, "--width", str(cfg.width),
            "--image-size", str(run.image_size), "--per-worker-batch", str(cfg.per_worker_batch),
            "--epochs", str(cfg.epochs), "--steps-per-epoch", str(cfg.steps_per_epoch),
            "--warmup-steps", str(cfg.warmup_steps), "--compression", run.compression,
            "--intra-op-threads", str(cfg.intra_op_threads),
            "--results-dir", os.path.abspath(cfg.results_dir), "--study", cfg.study,
            "--run-id", run_id, "--role", role, "--copies", str(copies)] + (["--lr", repr(cfg.lr)] if cfg.lr else []) \
        + (["--seed", str(run.repeat)] if cfg.seed_per_repeat else [])


def commands(cfg: SweepConfig, run: Run) -> list[tuple[str, list[str]]]:
    """(run id, argv) of every process the configuration starts at once."""
    cores = cores_available()
    pinned = bool(shutil.which("taskset")) and run.workers <= len(cores)
    py = cfg.python
    if run.kind == "ceiling":
        out = []
        for i in range(run.workers):
            rid = run.run_id(i)
            argv = [_horovodrun(cfg), "--gloo", "-np", "1", "-H", "localhost:1",
                    py, "-m", "train.sync_allreduce", *trainer_flags(cfg, run, rid, "ceiling", run.workers)]
            if pinned:
                argv = ["taskset", "-c", str(cores[i]), *argv]
            out.append((rid, argv))
        return out
    rid = run.run_id()
    use = cores[:run.workers]
    if run.mode == "sync":
        inner = [py, "-m", "train.sync_allreduce", *trainer_flags(cfg, run, rid)]
        if pinned:
            inner = [py, "-m", "compare.pin", "--cores", ",".join(map(str, use)), "--", *inner]
        argv = [_horovodrun(cfg), "--gloo", "-np", str(run.workers), "-H", f"localhost:{run.workers}", *inner]
    else:
        # The local PS launcher starts chief, workers and PS shards itself (they inherit the
        # affinity): the whole cluster gets the same p cores the sync arm's p ranks get.
        argv = [py, "-m", "train.async_ps", "--workers", str(run.workers), "--ps", str(cfg.ps),
                *trainer_flags(cfg, run, rid)]
        if pinned:
            argv = ["taskset", "-c", ",".join(map(str, use)), *argv]
    return [(rid, argv)]


def _tail(text: str, lines: int = 6, chars: int = 1500) -> str:
    keep = [l for l in text.strip().splitlines() if l.strip() and "WARNING" not in l][-lines:]
    return "\n".join(keep)[-chars:]


def failed_record(cfg: SweepConfig, run: Run, run_id: str, started_at: str, error: str,
                  argv: list[str], returncode: int | None) -> dict:
    return record.failed_record(study=cfg.study, run_id=run_id, started_at=started_at, error=error,
                                command=argv, returncode=returncode, facts={
        "mode": run.mode, "model": "cnn11", "head": run.head, "width": cfg.width, "dataset": cfg.dataset,
        "image_size": run.image_size, "num_workers": 1 if run.kind == "ceiling" else run.workers,
        "num_ps": cfg.ps if run.mode == "async" else 0, "per_worker_batch": cfg.per_worker_batch,
        "compression": run.compression, "role": run.kind,
        "copies": run.workers if run.kind == "ceiling" else 1, "config": {}})


def _kill_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the group this sweep started for that run (the PS launcher tears its own cluster
    down on SIGTERM; its tasks live in their own sessions), SIGKILL what is left after `grace`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def execute(cfg: SweepConfig, run: Run, log_dir: str) -> list[str]:
    """Start the configuration's processes, wait, and record failures. Returns failed run ids."""
    started_at = now_iso()
    _ensure_newline(cfg.runs_path)  # the trainers append too: never onto a torn last line
    procs = []
    env = child_env()
    for rid, argv in commands(cfg, run):
        log = open(os.path.join(log_dir, f"{rid}.log"), "w", encoding="utf-8")
        log.write("$ " + shlex.join(argv) + "\n")
        log.flush()
        procs.append((rid, argv, log, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                                       stderr=subprocess.STDOUT, start_new_session=True)))
    deadline = time.monotonic() + cfg.timeout
    results = {}
    try:
        for rid, argv, log, proc in procs:
            try:
                results[rid] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
                results[rid] = None
            log.close()
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): leave no run of ours behind
        for _, _, log, proc in procs:
            if proc.poll() is None:
                _kill_group(proc)
            log.close()
        raise
    have = {r.get("run_id") for r in _records(cfg.runs_path) if r.get("status") == "ok"}
    failed = []
    for rid, argv, _, proc in procs:
        if rid in have:
            continue
        code = results[rid]
        with open(os.path.join(log_dir, f"{rid}.log"), encoding="utf-8", errors="replace") as f:
            out = f.read()
        if code is None:
            why = f"timed out after {cfg.timeout:.0f} s"
        elif code == 0:
            why = "exited 0 but wrote no record"
        else:
            why = f"exit code {code}"
        error = f"{why}: {_tail(out)}" if out.strip() else why
        _ensure_newline(cfg.runs_path)
        append_record(cfg.runs_path, failed_record(cfg, run, rid, started_at, error, argv, code))
        failed.append(rid)
    return failed


def _records(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    return read_records(path)[0]


def _ensure_newline(path: str) -> None:
    """A torn last line (a crash mid-write elsewhere) must not swallow the next record."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def done_ids(cfg: SweepConfig) -> set[str]:
    return {r.get("run_id") for r in _records(cfg.runs_path) if r.get("status") == "ok"}


def run_bench(cfg: SweepConfig, log_dir: str) -> dict:
    """The Horovod allreduce microbenchmark at np=2 (pinned), for the model's gradient size."""
    out = os.path.join(cfg.study_dir, "allreduce.json")
    cores = cores_available()
    model = f"{cfg.heads[0]},{cfg.image_sizes[0]},{cfg.width},10"
    inner = [cfg.python, "-m", "compare.bench_allreduce", "--out", os.path.abspath(out),
             "--model", model, "--intra-op-threads", str(cfg.intra_op_threads)]
    if shutil.which("taskset") and len(cores) >= 2:
        inner = [cfg.python, "-m", "compare.pin", "--cores", ",".join(map(str, cores[:2])), "--", *inner]
    argv = [_horovodrun(cfg), "--gloo", "-np", "2", "-H", "localhost:2", *inner]
    with open(os.path.join(log_dir, "allreduce.log"), "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=cfg.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            code = None
    if code != 0 or not os.path.exists(out):
        with open(os.path.join(log_dir, "allreduce.log"), encoding="utf-8", errors="replace") as f:
            return {"status": "failed", "error": f"exit code {code}: {_tail(f.read())}"}
    with open(out, encoding="utf-8") as f:
        return {"status": "ok", **json.load(f)}


def write_sweep_info(cfg: SweepConfig, argv: list[str] | None) -> None:
    info = {"config": dataclasses.asdict(cfg), "command": "python -m compare " + shlex.join(argv or []),
            "started_at": now_iso(), "host": platform.node(), "cores": cores_available(),
            "cpu": _cpu_model(), "python": platform.python_version(), "platform": platform.platform()}
    path = os.path.join(cfg.study_dir, "sweep.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, path)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sweep(cfg: SweepConfig, argv: list[str] | None = None, progress: bool = True) -> dict:
    """Run every planned configuration not yet done; returns counts."""
    from tqdm import tqdm

    def _terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    os.makedirs(cfg.study_dir, exist_ok=True)
    log_dir = os.path.join(cfg.study_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    write_sweep_info(cfg, argv)
    runs = plan(cfg)
    done = done_ids(cfg)
    todo = [r for r in runs if not set(r.run_ids()) <= done]
    counts = {"planned": len(runs), "skipped": len(runs) - len(todo), "ok": 0, "failed": 0}
    bench_path = os.path.join(cfg.study_dir, "allreduce.json")
    need_bench = cfg.bench and not os.path.exists(bench_path)
    total = len(todo) + (1 if need_bench else 0)
    bar = tqdm(total=total, desc=f"compare run {cfg.study}", unit="run", disable=not progress,
               file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc}: {n}/{total} |{bar}| {elapsed}<{remaining} {postfix}")
    try:
        if need_bench:  # first: it also measures the matmul peak every run then reuses
            bar.set_postfix_str("allreduce microbenchmark np=2")
            bench = run_bench(cfg, log_dir)
            counts["bench"] = bench["status"] + (f" ({bench['error'][:300]})" if bench.get("error") else "")
            bar.update(1)
        for i, run in enumerate(todo):
            bar.set_postfix_str(f"run {i + 1} of {len(todo)}: {run.label()}")
            failed = execute(cfg, run, log_dir)
            counts["failed" if failed else "ok"] += 1
            bar.update(1)
    finally:
        bar.close()
    return counts
