"""Backend `local`: every run a process tree on this machine, through the real launchers. No TensorFlow.

sync:    horovodrun --gloo -np P -H localhost:P python -m compare.pin --cores C -- python -m train.sync_allreduce ...
async_allreduce: the same, with python -m train.async_allreduce (the seed's method, issue 16)
async:   taskset -c CORES python -m train.async_ps --workers P --ps S ...
ceiling: P independent 1-worker sync runs side by side, one per core (role ceiling, copies P)
bench:   the Horovod allreduce microbenchmark at np=2, once per study (allreduce.json)
Builds command lines only; compare/launch.py starts, times and records them.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from typing import Callable, ContextManager

from compare.plan import Run, StudyConfig, cores_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Stage:
    """Runs that share one cluster state; `bench` = (argv, output file) measured first, or None."""
    label: str
    runs: list[Run]
    bench: tuple[list[str], str] | None
    cluster: Callable[[], ContextManager] = contextlib.nullcontext


# The Horovod trainer of each mode launched through horovodrun (one rank pinned per core).
HOROVOD_TRAINERS = {"sync": "train.sync_allreduce", "async_allreduce": "train.async_allreduce"}


def child_env(python: str = sys.executable) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = os.path.dirname(os.path.abspath(python))
    env.update({
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # A process pinned to one core would default to one inter-op thread, and a PS cluster
        # deadlocks with one: every trainer gets two, whatever its affinity.
        "TF_NUM_INTEROP_THREADS": "2",
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
        "PYTHONPATH": ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
    })
    return env


def horovodrun(python: str) -> str:
    here = os.path.join(os.path.dirname(os.path.abspath(python)), "horovodrun")
    return here if os.path.exists(here) else (shutil.which("horovodrun") or "horovodrun")


def trainer_flags(cfg: StudyConfig, run: Run, run_id: str) -> list[str]:
    """The trainer flags of one run: the study facts (role, copies) are record fields."""
    return ["--dataset", cfg.dataset, "--head", run.head, "--width", str(cfg.width),
            "--image-size", str(run.image_size), "--per-worker-batch", str(cfg.per_worker_batch),
            "--epochs", str(cfg.epochs), "--steps-per-epoch", str(cfg.steps_for(run.mode)),
            "--warmup-steps", str(cfg.warmup_steps), "--compression", run.compression,
            "--intra-op-threads", str(cfg.intra_op_threads),
            "--results-dir", os.path.abspath(cfg.results_dir), "--study", cfg.study, "--run-id", run_id,
            "--role", run.role, "--copies", str(run.copies)] \
        + (["--lr", repr(cfg.lr_for(run.mode))] if cfg.lr_for(run.mode) else []) \
        + (["--seed", str(run.repeat)] if cfg.seed_per_repeat else [])


class LocalBackend:
    name = "local"

    def hosts(self) -> set[str]:
        return {socket.gethostname()}

    def env(self, cfg: StudyConfig) -> dict[str, str]:
        return child_env(cfg.python)

    def stages(self, cfg: StudyConfig, runs: list[Run]) -> list[Stage]:
        return [Stage("local", runs, self.bench(cfg) if cfg.bench else None)]

    def bench(self, cfg: StudyConfig) -> tuple[list[str], str]:
        """Horovod allreduce at np=2 (pinned), the model's gradient size among the message sizes."""
        out = os.path.abspath(os.path.join(cfg.study_dir, "allreduce.json"))
        model = f"{cfg.heads[0]},{cfg.image_sizes[0]},{cfg.width},10"
        inner = [cfg.python, "-m", "train.bench_allreduce", "--out", out, "--model", model,
                 "--intra-op-threads", str(cfg.intra_op_threads)]
        cores = cores_available()
        if shutil.which("taskset") and len(cores) >= 2:
            inner = [cfg.python, "-m", "compare.pin", "--cores", ",".join(map(str, cores[:2])), "--", *inner]
        return [horovodrun(cfg.python), "--gloo", "-np", "2", "-H", "localhost:2", *inner], out

    def commands(self, cfg: StudyConfig, run: Run) -> list[tuple[str, list[str]]]:
        """(run id, argv) of every process the run starts at once."""
        cores = cores_available()
        procs = run.copies if run.role == "ceiling" else run.workers
        pinned = bool(shutil.which("taskset")) and procs <= len(cores)
        py, hvd = cfg.python, horovodrun(cfg.python)
        if run.role == "ceiling":
            out = []
            for i, rid in enumerate(run.run_ids()):
                argv = [hvd, "--gloo", "-np", "1", "-H", "localhost:1",
                        py, "-m", "train.sync_allreduce", *trainer_flags(cfg, run, rid)]
                out.append((rid, ["taskset", "-c", str(cores[i]), *argv] if pinned else argv))
            return out
        [rid] = run.run_ids()
        use = ",".join(map(str, cores[:run.workers]))
        if run.mode in HOROVOD_TRAINERS:
            inner = [py, "-m", HOROVOD_TRAINERS[run.mode], *trainer_flags(cfg, run, rid)]
            if pinned:
                inner = [py, "-m", "compare.pin", "--cores", use, "--", *inner]
            return [(rid, [hvd, "--gloo", "-np", str(run.workers), "-H", f"localhost:{run.workers}", *inner])]
        # The PS launcher starts chief, workers and PS shards itself (they inherit the affinity):
        # the whole cluster gets the same p cores the sync arm's p ranks get.
        argv = [py, "-m", "train.async_ps", "--workers", str(run.workers), "--ps", str(cfg.ps),
                *trainer_flags(cfg, run, rid)]
        return [(rid, ["taskset", "-c", use, *argv] if pinned else argv)]

    def cancel(self, cfg: StudyConfig, run_id: str) -> None:
        """Nothing outside the process group to stop."""

    def close(self, cfg: StudyConfig) -> None:
        """No cluster to take down."""
