"""A time-dilated synchronous step (issue 14): the real Horovod allreduce of cnn11's gradient tensors, computation
replaced by sleeps. One process per rank, under horovodrun (Gloo) or srun --mpi=pmix (MPI).

    horovodrun --gloo -np 2 -H localhost:2 python -m train.dilated_step --profile h200 --dilation 20 \
        --byte-dilation 1 --study S --results-dir results --run-id R

Every step of every rank: a forward delay of D x (1 - backward_fraction) x t_compute, then the backward pass as
a chain of sleeps in backward order; gradient tensor i (the model's real tensor, its element count divided by K)
is handed to Horovod the moment the profile's gradient-ready curve says it is ready, so its allreduce runs while
later layers still "compute". The step ends when every allreduce has returned. Real elapsed time / D is the
emulated cluster's time; Horovod's fusion threshold is divided by K and its cycle time multiplied by D, so the
number of fused messages and the negotiation rate are the emulated cluster's. t_compute, the ready curve and the
link come from compare/scaling.py's profile (compare/dilated.py reads them; nothing copied here).

images/sec (emulated) = global step change x global batch / (elapsed / D), after the warm-up steps; the record
also holds the exposed communication per step (end of backward -> last allreduce back, emulated seconds) and the
host CPU time every rank spent per step (what the emulation costs the machine).
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import socket
import statistics
import sys
import time
from dataclasses import dataclass

from compare import dilated as dil
from train import record

PROG = "train.dilated_step"


@dataclass(frozen=True)
class DilatedWorkload:
    """What both dilated arms share and record.base_record reads (record field `config`)."""
    profile: str = "tsubame2.5"
    head: str = "gap"
    per_worker_batch: int = 64
    dilation: float = 4.0
    byte_dilation: int = 64
    steps: int = 8                  # measured steps (sync) / updates per worker (PS) after the warm-up
    warmup_steps: int = 2
    study: str = "dilated"
    results_dir: str = "results"
    run_id: str = ""
    # fixed facts of the emulated workload (the seed's: cnn11 width 1 at 224x224, 1000 classes)
    width: float = 1.0
    image_size: int = dil.IMAGE_SIZE
    dataset: str = "synthetic"
    compression: str = "none"
    precision: str = "fp32"
    role: str = "main"
    copies: int = 1
    intra_op_threads: int = 1

    @property
    def runs_path(self) -> str:
        return record.runs_path(self.results_dir, self.study)


@dataclass(frozen=True)
class DilatedConfig(DilatedWorkload):
    """The sync arm's settings on top of the shared workload."""
    delay: str = "per_layer"        # per_layer: allreduce i starts when tensor i is ready; end: after backward
    ranks_per_node: int = 0         # 0: from the launcher's environment
    step_cv: float = -1.0           # < 0: the profile's step_cv (straggler spread), 0: none
    seed: int = 0
    timeline: str = ""              # HOROVOD_TIMELINE file: rank 0 breaks its steps down into the record


def workload_parser(prog: str, description: str, parents: tuple = ()) -> argparse.ArgumentParser:
    """argparse with the shared workload's options (one line, exit 2 on bad input: train.config's parser)."""
    from train.config import _OneLineParser

    ap = _OneLineParser(prog=prog, description=description,
                        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                        parents=list(parents))
    d = DilatedWorkload()
    ap.add_argument("--profile", choices=dil.PROFILES, default=d.profile)
    ap.add_argument("--head", choices=("gap", "fc4096"), default=d.head)
    ap.add_argument("--per-worker-batch", type=int, default=d.per_worker_batch)
    ap.add_argument("--dilation", type=float, default=d.dilation, help="D: real time per emulated second")
    ap.add_argument("--byte-dilation", type=int, default=d.byte_dilation, help="K: each tensor's size / K")
    ap.add_argument("--steps", type=int, default=d.steps, help="measured steps after the warm-up")
    ap.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    ap.add_argument("--study", default=d.study)
    ap.add_argument("--results-dir", default=d.results_dir)
    ap.add_argument("--run-id", default="")
    return ap


def check_workload(ap: argparse.ArgumentParser, a: argparse.Namespace, more: tuple = ()) -> dict:
    """Exit 2 naming the first bad value (the shared checks, then `more`: (flag, ok, what)); returns the
    shared workload's fields."""
    for name, ok, what in (("--per-worker-batch", a.per_worker_batch >= 1, ">= 1"),
                           ("--dilation", a.dilation > 0, "> 0"), ("--byte-dilation", a.byte_dilation >= 1, ">= 1"),
                           ("--steps", a.steps >= 2, ">= 2"), ("--warmup-steps", a.warmup_steps >= 0, ">= 0"),
                           *more):
        if not ok:
            ap.error(f"{name} must be {what}")
    if not a.study or os.sep in a.study or a.study.startswith("."):
        ap.error(f"bad study name {a.study!r}")
    return dict(profile=a.profile, head=a.head, per_worker_batch=a.per_worker_batch, dilation=a.dilation,
                byte_dilation=a.byte_dilation, steps=a.steps, warmup_steps=a.warmup_steps, study=a.study,
                results_dir=a.results_dir, run_id=a.run_id or record.default_run_id())


def parse(argv: list[str] | None, prog: str = PROG, doc: str | None = __doc__, delays: bool = True) -> DilatedConfig:
    """The sync arm's options; `delays=False`: the async all-reduce arm's (one compute delay a sub-batch)."""
    ap = workload_parser(prog, doc)
    d = DilatedConfig()
    if delays:
        ap.add_argument("--delay", choices=("per_layer", "end"), default=d.delay)
        # not --timeline: horovodrun's own parser would take it for its --timeline-filename
        ap.add_argument("--hvd-timeline", default="", help="record a Horovod timeline here and put where each "
                                                           "step's time went (emulated) into the record")
    ap.add_argument("--ranks-per-node", type=int, default=d.ranks_per_node)
    ap.add_argument("--step-cv", type=float, default=d.step_cv)
    ap.add_argument("--seed", type=int, default=d.seed)
    a = ap.parse_args(argv)
    shared = check_workload(ap, a, (("--ranks-per-node", a.ranks_per_node >= 0, ">= 0"),
                                    ("--step-cv", a.step_cv < 1, "< 1")))
    return DilatedConfig(**shared, delay=a.delay if delays else "sub_batch", ranks_per_node=a.ranks_per_node,
                         step_cv=a.step_cv, seed=a.seed,
                         timeline=os.path.abspath(a.hvd_timeline) if delays and a.hvd_timeline else "")


def rank_plan(cfg: DilatedConfig) -> tuple[dict, float]:
    """The profile's step plan and the step-time spread (--step-cv, or the profile's when < 0), with Horovod's
    emulated settings put in the environment, where hvd.init reads them: fused messages as in the real model
    (threshold / K), negotiation cycle at the emulated cluster's rate (x D)."""
    plan = dil.step_plan(cfg.profile, cfg.head, cfg.per_worker_batch)
    os.environ["HOROVOD_FUSION_THRESHOLD"] = str(max(1, int(plan["fusion_threshold_B"] / cfg.byte_dilation)))
    os.environ["HOROVOD_CYCLE_TIME"] = f"{plan['cycle_time_s'] * cfg.dilation * 1e3:g}"
    if cfg.timeline:
        os.makedirs(os.path.dirname(cfg.timeline), exist_ok=True)
        os.environ["HOROVOD_TIMELINE"] = cfg.timeline   # read by hvd.init; only rank 0 (the coordinator) writes
    return plan, plan["step_cv"] if cfg.step_cv < 0 else cfg.step_cv


def timeline_terms(path: str, skip_steps: int, dilation: float) -> dict:
    """Where a measured step's time went, from rank 0's Horovod timeline (compare/timeline.py's phases), times in
    emulated seconds (real / D): the backward window, the wait for the slowest rank's last gradients, the
    reduction left after every rank is done (exposed), Horovod's start latency (every rank ready -> the fused
    operation starts: negotiation cycle and queueing behind earlier messages), busy time of the MPI/Gloo
    operations, and fused messages per step. An unreadable timeline is a fact of the record, not a lost run."""
    from compare.timeline import TimelineError, breakdown
    try:
        b = breakdown(path, skip_steps)
    except (OSError, TimelineError) as e:
        return {"file": os.path.basename(path), "error": str(e).splitlines()[0]}
    seconds = ("step_s", "before_comm", "backward", "wait_other", "exposed_comm", "allreduce_busy", "memcpy_busy",
               "start_latency")
    return {"file": os.path.basename(path), "source": "HOROVOD_TIMELINE on rank 0, compare/timeline.py",
            "steps": b["steps"], "tensors_per_step": b["tensors_per_step"], "messages": b.get("messages"),
            **{(k if k.endswith("_s") else f"{k}_s"): b[k] / dilation for k in seconds if b.get(k) is not None}}


def compute_scales(cfg: DilatedConfig, rank: int, cv: float) -> list[float]:
    """Each step's compute-time scale on this rank: over the measured steps the normal's quantiles, shuffled per
    rank, so every rank's mean is exactly t_compute and its spread exactly step_cv (plain draws left the 1-rank
    baseline off by their own sample mean, up to ~1% at 6 steps); the step's max over ranks is what the
    straggler term models."""
    rng = random.Random(cfg.seed * 100003 + rank)
    z = [statistics.NormalDist().inv_cdf((i + 0.5) / cfg.steps) for i in range(cfg.steps)]
    z = [rng.gauss(0.0, 1.0) for _ in range(cfg.warmup_steps)] + rng.sample(z, len(z))
    return [max(0.05, 1.0 + cv * x) for x in z]


def _cpu_s() -> float:
    """CPU seconds (user + system, every thread) this process has used: the host's cost of the rank."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def dilated_record(cfg: DilatedConfig, mode: str, started_at: str, plan: dict, thr: dict, per_rank: list[dict],
                   cv: float, controller: str, wall: float, steps: int) -> dict:
    """The record both Horovod dilated arms write (rank 0): throughput `thr` (emulated), the emulated workload,
    the links, Horovod's emulated settings and what the emulation cost the host over `steps` steps."""
    p, D, K = len(per_rank), cfg.dilation, cfg.byte_dilation
    counts = dil.grad_counts(cfg.head)
    hosts = [r["host"] for r in per_rank]
    host_cpu_per_step = sum(r["cpu_s"] for r in per_rank) / steps
    real_step, ncores = wall / steps, os.cpu_count() or 1
    link = record.link_info()
    paper = dil.paper_workload(cfg.head)
    rec = record.base_record(cfg, mode=mode, run_id=cfg.run_id, started_at=started_at)
    rec.update({
        "num_workers": p, "num_ps": 0, "global_batch": cfg.per_worker_batch * p, "num_classes": dil.CLASSES,
        "steps": cfg.warmup_steps + cfg.steps, "warmup_steps": cfg.warmup_steps, **thr,
        "train_gflop_per_img": paper["train_gflop_per_img"],
        "achieved_gflops": thr["images_per_sec"] * paper["train_gflop_per_img"] if thr["images_per_sec"] else None,
        "mfu": None,  # emulated GPUs: no peak of this machine applies
        "trainable_params": paper["params"], "gradient_bytes": 4 * sum(counts),
        "hosts": hosts, "finished_at": record.now_iso(),
        "dilation": {
            "D": D, "K": K, "profile": cfg.profile, "delay": cfg.delay,
            "t_compute_s": plan["t_compute_s"], "t_compute_source": plan["t_compute_source"],
            "backward_fraction": plan["backward_fraction"], "ready_curve_source": plan["ready_curve_source"],
            "step_cv": cv, "ranks": p, "nodes": len(set(hosts)),
            "ranks_per_node": cfg.ranks_per_node or max(hosts.count(h) for h in set(hosts)),
            "link_rate": link["rate"], "link_Bps_shaped": dil.rate_Bps(link["rate"]),
            "emulated_link_Bps": plan["link_Bps"], "controller": controller,
            "grad_tensors": len(counts), "grad_bytes_full": 4 * sum(counts),
            "grad_bytes_sent": 4 * sum(dil.dilated_counts(counts, K)),
            "fusion_threshold_B": int(os.environ["HOROVOD_FUSION_THRESHOLD"]),
            "cycle_time_ms": float(os.environ["HOROVOD_CYCLE_TIME"]),
            "real_step_s": real_step, "measured_steps": steps,
            "host_cpu_s_per_step": host_cpu_per_step, "host_cores": ncores,
            # the share of the machine the emulation used: far below 1 or the host, not the links, sets the pace
            "host_busy_fraction": host_cpu_per_step / (ncores * real_step),
            "rank_cpu_affinity": [r["affinity"] for r in per_rank],
        },
    })
    return rec


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    started_at = record.now_iso()
    plan, cv = rank_plan(cfg)
    D, K = cfg.dilation, cfg.byte_dilation

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    # the sleep chain holds one inter-op thread; Horovod's ops are asynchronous kernels and hold none
    tf.config.threading.set_inter_op_parallelism_threads(4)
    import horovod.tensorflow as hvd

    hvd.init()
    p, rank = hvd.size(), hvd.rank()
    counts = dil.grad_counts(cfg.head)
    sent = dil.dilated_counts(counts, K)
    order = list(range(len(counts)))[::-1]                       # backward order: the last layer's gradients first
    ready = dil.ready_offsets([counts[i] for i in order], plan["ready_curve"])
    t_c = plan["t_compute_s"] * D
    t_fwd, t_bwd = t_c * (1 - plan["backward_fraction"]), t_c * plan["backward_fraction"]
    deadlines = [t_fwd + (t_bwd if cfg.delay == "end" else x * t_bwd) for x in ready]
    scales = compute_scales(cfg, rank, cv)

    grads = [tf.Variable(tf.ones([sent[i]]), trainable=False, name=f"g{i}") for i in order]

    def sleep_until(t0, scale, deadline, _prev):
        # runs in a TF inter-op thread; time.sleep releases the GIL, Horovod's thread keeps moving bytes
        left = float(t0) + float(scale) * float(deadline) - time.monotonic()
        if left > 0:
            time.sleep(left)
        return time.monotonic()

    def now(*_):
        return time.monotonic()

    @tf.function(autograph=False)
    def step(t0, scale):
        prev, outs = tf.constant(0.0, tf.float64), []
        for j, (g, dl) in enumerate(zip(grads, deadlines)):
            prev = tf.py_function(sleep_until, [t0, scale, tf.constant(dl, tf.float64), prev], tf.float64)
            with tf.control_dependencies([prev]):
                outs.append(hvd.allreduce(tf.identity(g), op=hvd.Sum, name=f"dilated_g{j}"))
        bwd_end = tf.py_function(sleep_until, [t0, scale, tf.constant(t_fwd + t_bwd, tf.float64), prev], tf.float64)
        # the step ends when every allreduce has returned. A data input, not a control dependency: inside a
        # tf.function a py_function's control dependency on ops whose outputs are not fetched did not hold, and
        # each rank ran at its own pace, never waiting for the others (found 2026-11-29; the straggler test)
        reduced = tf.add_n([o[0] for o in outs])   # every rank sends ones: p per tensor when the sum happened
        done = tf.py_function(now, [bwd_end, reduced], tf.float64)
        return bwd_end, done, reduced

    samples, exposed, steps_done = [], [], 0
    cpu0 = wall0 = t_done = None
    for s in range(cfg.warmup_steps + cfg.steps):
        if s == cfg.warmup_steps:
            hvd.allreduce(tf.zeros([1]), name="dilated_barrier").numpy()   # line the ranks up before measuring
            cpu0, wall0 = _cpu_s(), time.monotonic()
            t_done = wall0
            samples.append((wall0 / D, steps_done))
        scale = scales[s]
        # the emulated GPU starts its next step when the last allreduce of this one returned: this loop's own
        # dispatch time (host, not emulated cluster) then hides in the next forward delay, unless it is longer
        t0 = t_done if t_done is not None else time.monotonic()
        bwd_end, done, reduced = step(tf.constant(t0, tf.float64), tf.constant(scale, tf.float64))
        t_done = float(done.numpy())
        if float(reduced.numpy()) != p * len(grads):
            raise RuntimeError(f"step {s}: the allreduce summed to {float(reduced.numpy()):g}, not {p * len(grads)}")
        steps_done += 1
        if s >= cfg.warmup_steps:
            samples.append((t_done / D, steps_done))
            # exposed: how far the last allreduce ends past the scheduled end of backward (the sleeps' own
            # lateness, e.g. the host busy moving bytes, counts too: the step is that much longer)
            exposed.append(max(0.0, t_done - (t0 + scale * (t_fwd + t_bwd))) / D)
    wall = t_done - wall0
    cpu = _cpu_s() - cpu0

    # every rank's facts to rank 0, the one writer
    per_rank = hvd.allgather_object({"host": socket.gethostname(), "cpu_s": cpu, "wall_s": wall,
                                     "exposed_p50_s": statistics.median(exposed), "affinity": record.cpu_affinity()})
    controller = "mpi" if hvd.mpi_enabled() and not hvd.gloo_enabled() else "gloo"
    if cfg.timeline:
        hvd.shutdown()   # every rank: Horovod's background thread ends and rank 0's timeline writer flushes
    if rank != 0:
        return 0
    thr = record.throughput([samples], cfg.per_worker_batch * p)
    rec = dilated_record(cfg, "sync", started_at, plan, thr, per_rank, cv, controller, wall, cfg.steps)
    rec["dilation"].update({"exposed_s_p50": statistics.median(exposed), "exposed_s_mean": statistics.fmean(exposed),
                            "exposed_s_per_rank_p50": [r["exposed_p50_s"] for r in per_rank]})
    if cfg.timeline:
        rec["dilation"]["timeline"] = timeline_terms(cfg.timeline, cfg.warmup_steps, D)
    record.append_record(cfg.runs_path, rec)
    print(f"{PROG}: record {cfg.run_id} -> {cfg.runs_path}: {rec['images_per_sec']:.1f} emulated images/sec "
          f"on {p} ranks (D={D:g}, K={K})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
