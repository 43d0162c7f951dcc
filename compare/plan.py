"""The study: its configuration (one dataclass, four presets) and its grid of runs. No TensorFlow.

A Run is one configuration of the grid; it starts one process (or, for the machine's parallel ceiling,
`copies` independent processes side by side). Its study facts (role, copies, link) go into the records
the trainers write, as fields, never as tag strings. Repeat-major order, so the slow drift of a noisy
machine spreads over every configuration.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import re
import sys
from dataclasses import dataclass

from train import record
from train.config import ConfigError, parse_compression

CLUSTERS = ("local", "emulated", "slurm", "dilated")
# The study's three arms: mode name (a record's `mode`) -> what it is. Horovod runs sync and async_allreduce.
MODES = {"sync": "sync ring-allreduce (Horovod)", "async": "async parameter servers (ParameterServerStrategy)",
         "async_allreduce": "async all-reduce (the seed's method: compute never waits, Horovod allreduce thread)"}
# Compressions a study runs per mode (None: every train/compression.py method). The PS strategy pushes fp32
# gradients (train.async_ps refuses any other); the async all-reduce trainer has Horovod's fp16 hook only, and
# the studies compare compression in the sync arm (issue 15), so it runs uncompressed.
MODE_COMPRESSIONS: dict[str, tuple[str, ...] | None] = {"sync": None, "async": ("none",), "async_allreduce": ("none",)}
# Every backend launches every mode (SLURM: slurm/async_allreduce.sbatch; dilated: train/dilated_async_allreduce.py).
# The emulated cluster's runs: sync 1 worker on 1 node / 2 workers on 2 nodes, async PS and async all-reduce
# likewise (the PS arm's chief and PS on node 1), and two independent 1-worker sync runs, one a node (how
# much the nodes slow each other).
EMULATED_RUNS = ("sync-1n", "sync-2n", "async-1n", "async-2n", "async_allreduce-1n", "async_allreduce-2n", "ceil-2n")
LINK_RE = re.compile(r"\d+(\.\d+)?(bit|kbit|mbit|gbit)", re.I)


class PlanError(ValueError):
    """Bad study configuration: one line, exit 2, nothing written."""


@dataclass(frozen=True)
class StudyConfig:
    study: str = "local"
    cluster: str = "local"
    results_dir: str = "results"
    modes: tuple[str, ...] = tuple(MODES)
    workers: tuple[int, ...] = (1, 2)
    repeats: int = 3
    heads: tuple[str, ...] = ("gap",)
    image_sizes: tuple[int, ...] = (32,)
    compressions: tuple[str, ...] = ("none",)
    width: float = 0.25
    per_worker_batch: int = 64
    epochs: int = 1
    steps_per_epoch: int = 30         # 0: one pass over the training set (real datasets)
    async_steps_per_epoch: int = 0    # both async arms (0: as steps_per_epoch): their rates come from few updates
    async_allreduce_lr: float = 0.0   # base lr per sub-batch of the async all-reduce arm (0: as lr)
    warmup_steps: int = 5
    dataset: str = "synthetic"
    lr: float = 0.0                   # base learning rate per worker (0: the trainers' default)
    seed_per_repeat: bool = False     # repeat r runs with --seed r (the convergence study)
    compress_single_worker: bool = True  # False: no compressed 1-worker runs (nothing on the wire)
    ps: int = 1
    intra_op_threads: int = 1
    ceiling: bool = True
    bench: bool = True
    timeout: float = 600.0
    python: str = sys.executable
    # the emulated cluster (backend "emulated")
    links: tuple[str, ...] = ("10gbit", "1gbit", "200mbit")
    emulated_runs: tuple[str, ...] = EMULATED_RUNS
    bench_reps: int = 5
    bench_factors: str = "0.0625,0.25,0.5,1"
    state_dir: str = "/tmp/localcluster-emulated"
    net_id: int = 84
    keep_up: bool = False
    load_interval_s: float = 15.0
    # the time-dilated emulation of a GPU cluster (backend "dilated", issue 14; compare/dilated.py)
    profile: str = "tsubame2.5"
    dilation: float = 2.0             # D: real seconds per emulated second
    byte_dilation: int = 256          # K: every gradient tensor's size / K, links at B/(K·D)
    ranks_per_node: int = 3
    async_max_workers: int = 0        # > 0: the async arm only up to this many workers (each is a TF process)
    max_d_change: float = 0.03        # fidelity: doubling D may change images/sec at the largest p by less
    min_link_fraction: float = 0.9    # fidelity: the link bench must reach this share of the shaped rate

    @property
    def study_dir(self) -> str:
        return os.path.join(self.results_dir, self.study)

    @property
    def runs_path(self) -> str:
        return record.runs_path(self.results_dir, self.study)

    @property
    def is_reference(self) -> bool:
        """A curated study (results/reference/<name>): must run on one clean commit."""
        return os.path.basename(os.path.normpath(os.path.abspath(self.results_dir))) == "reference"

    def steps_for(self, mode: str) -> int:
        # async PS and async all-reduce: on a slow link an update carries many steps (an all-reduce of the fc4096
        # gradient at 200 Mbit/s spans several sub-batches), and the rate needs several updates for an SE
        return self.async_steps_per_epoch if mode != "sync" and self.async_steps_per_epoch else self.steps_per_epoch

    def lr_for(self, mode: str) -> float:
        """The base learning rate a mode's runs get (0: the trainer's default)."""
        return self.async_allreduce_lr if mode == "async_allreduce" and self.async_allreduce_lr else self.lr

    def validate(self) -> "StudyConfig":
        if self.study in ("", ".", "..") or os.sep in self.study or self.study.startswith("."):
            raise PlanError(f"bad study name {self.study!r}")
        if self.cluster not in CLUSTERS:
            raise PlanError(f"unknown cluster {self.cluster!r}; choose {', '.join(CLUSTERS)}")
        bad = [v for v in self.links if not LINK_RE.fullmatch(v)]
        if self.cluster == "emulated" and (bad or not self.links):
            raise PlanError(f"--links: expected rates like 10gbit,1gbit,200mbit, got {','.join(self.links)!r}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise PlanError(f"--modes: choose from {','.join(MODES)}, got {','.join(self.modes)!r}")
        for c in self.compressions:
            try:
                parse_compression(c)
            except ConfigError as e:
                raise PlanError(f"--compressions: {e}") from None
        if self.cluster == "dilated" and set(self.compressions) != {"none"}:
            raise PlanError("the dilated backend runs uncompressed gradients only (--compressions none)")
        if self.compressions and not any(runs_compression(m, c) for m in self.modes for c in self.compressions):
            raise PlanError(f"no mode of {','.join(self.modes)} runs compression {','.join(self.compressions)}")
        if self.cluster == "dilated":
            from compare.dilated import PROFILES
            if self.profile not in PROFILES:
                raise PlanError(f"--profile: choose {', '.join(PROFILES)}, got {self.profile!r}")
            if not (self.dilation > 0 and self.byte_dilation >= 1 and self.ranks_per_node >= 1):
                raise PlanError("--dilation must be > 0, --byte-dilation and --ranks-per-node >= 1")
            from compare.dilated import DilationError, dilated_rate
            try:
                dilated_rate(self.profile, self.byte_dilation, 2 * self.dilation)
            except DilationError as e:
                raise PlanError(str(e)) from None
        bad = [r for r in self.emulated_runs if r not in EMULATED_RUNS]
        if bad or not self.emulated_runs:
            raise PlanError(f"--runs: choose from {','.join(EMULATED_RUNS)}, got {','.join(self.emulated_runs)!r}")
        return self


# Defaults of each preset; explicit flags still win. `study` defaults to the preset's name.
PRESETS: dict[str, dict] = {
    "local": {},
    # issue 6: sync vs async at 1 and 2 workers on digits to a target accuracy, 3 seeds, fp16 in the sync arm
    # issue 16: the async all-reduce arm beside them, at the lr per sub-batch tests/test_async_allreduce.py
    # documents as converging (0.005: stale gradients with momentum 0.9 need a smaller step than sync's)
    "convergence": dict(dataset="digits", modes=("sync", "async", "async_allreduce"), workers=(1, 2), repeats=3,
                        compressions=("none", "fp16"), width=0.25, per_worker_batch=32, epochs=14,
                        steps_per_epoch=0, warmup_steps=2, lr=0.01, async_allreduce_lr=0.005, ceiling=False,
                        seed_per_repeat=True, compress_single_worker=False),
    # issue 15: each compression method vs none in the sync arm, 2 workers, 3 seeds, on digits (the recipe of
    # the README's first accuracy check: lr 0.025 per worker, 25 epochs). No 1-worker runs: nothing is on the wire.
    "compression": dict(dataset="digits", modes=("sync",), workers=(2,), repeats=3,
                        compressions=("none", "fp16", "powersgd:4", "topk:0.01", "sign"), width=0.25,
                        per_worker_batch=32, epochs=25, steps_per_epoch=0, warmup_steps=2, lr=0.025, ceiling=False,
                        bench=False, seed_per_repeat=True, compress_single_worker=False, timeout=1200.0),
    # issue 15 where bytes matter: each method in the sync arm across 2 emulated nodes at 1 Gbit and 200 Mbit
    # (the emulated preset's fc4096 workload: 72 MB of fp32 gradients a step), beside 1 worker on 1 node and
    # the side-by-side pair (the model's t1s and kappa); compressed runs only where they cross the link. top-k
    # without density warm-up (:0): a 1-epoch run would spend every step in DGC's first warm-up epoch (density
    # 0.25, 2x fewer bytes), not at the density F a long training run spends nearly all its steps at
    "compression-links": dict(cluster="emulated", modes=("sync",), heads=("fc4096",), width=0.25,
                              per_worker_batch=32, repeats=2, links=("1gbit", "200mbit"),
                              emulated_runs=("sync-1n", "sync-2n", "ceil-2n"),
                              compressions=("none", "fp16", "powersgd:4", "topk:0.01:0", "sign"),
                              steps_per_epoch=12, warmup_steps=2, timeout=300.0),
    # issue 8: 2 SLURM nodes in network namespaces, links shaped by tc
    "emulated": dict(cluster="emulated", heads=("fc4096",), width=0.25, per_worker_batch=32, repeats=1,
                     steps_per_epoch=12, async_steps_per_epoch=24, warmup_steps=2, timeout=300.0),
    # issue 14: the seed's cluster time-dilated: 3 ranks a node, p = 1..48 (compare/dilated.py), every arm at
    # every p (async: PS, 1 shard; at p = 24 its 26 TensorFlow processes held 7.6 GB in all; issue 16: the
    # seed's async all-reduce)
    "dilated": dict(cluster="dilated", modes=("sync", "async_allreduce", "async"), workers=(1, 3, 6, 12, 24, 48),
                    heads=("gap",),
                    image_sizes=(224,), width=1.0, per_worker_batch=64, repeats=1, steps_per_epoch=6,
                    warmup_steps=2, ceiling=False, timeout=1800.0, ranks_per_node=3, dilation=2.0,
                    byte_dilation=256, state_dir="/tmp/localcluster-dilated", net_id=86, load_interval_s=10.0),
    # the mechanism on every change: p = 1, 2, 4 on 2 nodes, small batch (short steps), small D
    "dilated-quick": dict(cluster="dilated", modes=("sync", "async_allreduce"), workers=(1, 2, 4), heads=("gap",),
                          image_sizes=(224,), width=1.0, per_worker_batch=4, repeats=1, steps_per_epoch=8,
                          warmup_steps=2, ceiling=False, timeout=300.0, ranks_per_node=2, dilation=2.0,
                          byte_dilation=256, bench_reps=3, state_dir="/tmp/localcluster-dilated-quick",
                          net_id=87, load_interval_s=5.0),
}


def preset(name: str, **overrides) -> StudyConfig:
    """The preset's config with `overrides` (None values ignored); validated."""
    if name not in PRESETS:
        raise PlanError(f"unknown preset {name!r}; choose {', '.join(PRESETS)}")
    values = {"study": name, **PRESETS[name]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return StudyConfig(**values).validate()


@dataclass(frozen=True)
class Run:
    """One planned configuration: role main (the measurement) or ceiling (`copies` 1-worker runs side by side)."""
    role: str
    mode: str
    workers: int
    head: str
    image_size: int
    compression: str
    repeat: int
    copies: int = 1
    link: str | None = None
    nodes: int = 1
    dilation: float | None = None     # the dilated backend's D (compare/dilated.py)

    def run_ids(self) -> list[str]:
        where = (f"-{self.link.lower()}-n{self.nodes}" if self.link else "")
        where += f"-d{self.dilation:g}" if self.dilation else ""
        if self.role == "ceiling":
            return [f"ceiling-p{self.copies}-{self.head}-s{self.image_size}{where}-r{self.repeat}-c{i}"
                    for i in range(self.copies)]
        return [f"{self.mode}-p{self.workers}-{self.head}-s{self.image_size}-{self.compression}{where}-r{self.repeat}"]

    def label(self) -> str:
        where = f" {self.link} {self.nodes} node(s)" if self.link else ""
        if self.role == "ceiling":
            return f"ceiling {self.copies}x1 {self.head} {self.image_size}px{where} r{self.repeat}"
        return f"{self.mode} p={self.workers} {self.head} {self.image_size}px {self.compression}{where} r{self.repeat}"

    def facts(self, cfg: StudyConfig) -> dict:
        """The record fields this run's records carry, for a failed record written on its behalf."""
        return {"mode": self.mode, "model": "cnn11", "head": self.head, "width": cfg.width,
                "dataset": cfg.dataset, "image_size": self.image_size, "num_workers": self.workers,
                "num_ps": cfg.ps if self.mode == "async" else 0, "per_worker_batch": cfg.per_worker_batch,
                "global_batch": cfg.per_worker_batch * self.workers, "warmup_steps": cfg.warmup_steps,
                "compression": self.compression, "role": self.role, "copies": self.copies,
                "intra_op_threads": cfg.intra_op_threads,
                "link": {"rate": self.link, "delay_ms": None, "nodes": 2 if self.link else None}}


def runs_compression(mode: str, compression: str) -> bool:
    """Whether the study runs `mode` with `compression` (MODE_COMPRESSIONS)."""
    allowed = MODE_COMPRESSIONS[mode]
    return allowed is None or compression in allowed


def cores_available() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def plan(cfg: StudyConfig) -> list[Run]:
    """Every run of the study, repeat-major."""
    if cfg.cluster == "emulated":
        return _plan_emulated(cfg)
    if cfg.cluster == "dilated":
        from compare.dilated import plan_dilated
        return plan_dilated(cfg)
    runs: list[Run] = []
    ncores = len(cores_available())
    for rep in range(cfg.repeats):
        for head, size, comp in itertools.product(cfg.heads, cfg.image_sizes, cfg.compressions):
            for p in cfg.workers:
                for mode in cfg.modes:
                    if not runs_compression(mode, comp):
                        continue
                    if p == 1 and comp != "none" and not cfg.compress_single_worker:
                        continue
                    runs.append(Run("main", mode, p, head, size, comp, rep))
                if cfg.ceiling and 1 < p <= ncores and comp == cfg.compressions[0]:
                    runs.append(Run("ceiling", "sync", 1, head, size, "none", rep, copies=p))
    return runs


def _plan_emulated(cfg: StudyConfig) -> list[Run]:
    """Link after link, then again (repeats outside links): conditions alternate on a noisy host. Compressed
    gradients (issue 15) only where they cross the link: 2-node runs of the modes that run them."""
    head, size = cfg.heads[0], cfg.image_sizes[0]
    runs = []
    for rep in range(cfg.repeats):
        for link in cfg.links:
            for name in cfg.emulated_runs:
                kind, nodes = name.split("-")
                n = int(nodes[0])
                if kind == "ceil":
                    runs.append(Run("ceiling", "sync", 1, head, size, "none", rep, copies=n, link=link, nodes=n))
                    continue
                for comp in cfg.compressions:
                    if runs_compression(kind, comp) and (comp == "none" or n > 1):
                        runs.append(Run("main", kind, n, head, size, comp, rep, link=link, nodes=n))
    return runs


def as_dict(cfg: StudyConfig) -> dict:
    return dataclasses.asdict(cfg)
