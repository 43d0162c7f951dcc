"""The time-dilated asynchronous arm (issue 14): TensorFlow's ParameterServerStrategy with cnn11's variables
(each 1/K of its size) on the PS shards and compute replaced by a delay inside each worker's dataset.

    python -m train.dilated_ps --workers 2 --ps 1 --profile tsubame2.5 --dilation 4 --byte-dilation 256 ...

Local cluster (S PS + N workers on 127.0.0.1, train/ps_cluster.py's launcher, the chief in this process), or
every task of a SLURM step / TF_CONFIG cluster running the same command. One scheduled step on a worker: the
next element of its dataset, which tf.data's experimental testing `sleep` delays by D x t_compute on the worker
(no prefetch: the delay precedes the push, as compute precedes it on a GPU), then the push (every variable's
assign_sub of a gradient made on the worker) and the pull (every variable read back to the worker), and one
increment of a global update counter on the PS. images/sec (emulated) = change of that counter x batch /
(elapsed / D), sampled on the chief after the warm-up updates. No accuracy: nothing is learned.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass

from compare import dilated as dil
from train import record
from train.dilated_step import DilatedWorkload, check_workload, workload_parser

PROG = "train.dilated_ps"
MIN_SHARD_BYTES = 64 << 10  # as train/async_ps.py: variables above 64 KiB are split over the PS shards


@dataclass(frozen=True)
class DilatedPSConfig(DilatedWorkload):
    """The PS arm's settings on top of the shared workload."""
    workers: int = 2
    ps: int = 1


def parse(argv: list[str]) -> tuple[DilatedPSConfig, argparse.Namespace]:
    from train import ps_cluster

    ap = workload_parser(PROG, __doc__, parents=(ps_cluster.extra_parser(),))
    d = DilatedPSConfig()
    ap.add_argument("--workers", type=int, default=d.workers)
    ap.add_argument("--ps", type=int, default=d.ps)
    a = ap.parse_args(argv)
    shared = check_workload(ap, a, (("--workers", a.workers >= 1, ">= 1"), ("--ps", a.ps >= 1, ">= 1")))
    return DilatedPSConfig(**shared, workers=a.workers, ps=a.ps), a


def main(argv: list[str] | None = None) -> int:
    from_command_line, argv = argv is None, sys.argv[1:] if argv is None else list(argv)
    cfg, extra = parse(argv)
    started_at = record.now_iso()
    import tensorflow as tf  # noqa: F401  (after parsing: bad input costs no TensorFlow start)
    from train import ps_cluster
    from train.config import ConfigError

    local = None
    try:
        with ps_cluster.cluster(extra.cluster, cfg, argv, module=PROG) as (resolver, local, source):
            if resolver.task_type in ("worker", "ps"):
                return ps_cluster.serve(resolver, cfg.intra_op_threads)
            code = chief(cfg, resolver, local, source, started_at)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        code = 2
    except (ps_cluster.Terminated, KeyboardInterrupt):
        code = 143
    except Exception as e:  # a lost task: the traceback, then one line; no record
        traceback.print_exc()
        print(f"{PROG}: error: run failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}",
              file=sys.stderr)
        code = 1
    if local and from_command_line:  # skip TF's exit-time calls to the tasks just stopped
        sys.stdout.flush(), sys.stderr.flush(), os._exit(code)
    return code


def chief(cfg: DilatedPSConfig, resolver, launcher, source: str, started_at: str) -> int:
    import tensorflow as tf

    jobs = resolver.cluster_spec().as_dict()
    num_workers, num_ps = len(jobs["worker"]), len(jobs["ps"])
    plan = dil.step_plan(cfg.profile, cfg.head, cfg.per_worker_batch)
    D, K = cfg.dilation, cfg.byte_dilation
    sent = dil.dilated_counts(dil.grad_counts(cfg.head), K)
    sleep_us = int(round(plan["t_compute_s"] * D * 1e6))
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=MIN_SHARD_BYTES, max_shards=num_ps)
    strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    with strategy.scope():
        weights = [tf.Variable(tf.zeros([n]), name=f"w{i}") for i, n in enumerate(sent)]
        updates = tf.Variable(0, dtype=tf.int64, name="updates")
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)

    # tf.data's testing transformation (not exported under tf.data.experimental in TF 2.15, present internally)
    from tensorflow.python.data.experimental.ops import testing as tfdata_testing

    def dataset_fn():
        ds = tf.data.Dataset.from_tensors(tf.constant(1e-6)).repeat()
        ds = ds.apply(tfdata_testing.sleep(sleep_us))  # the worker's compute, on the worker
        opts = tf.data.Options()
        opts.experimental_optimization.inject_prefetch = False  # the delay must precede the push, not overlap it
        opts.autotune.enabled = False
        return ds.with_options(opts)

    iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))

    @tf.function
    def step(it):
        lr = next(it)                                     # blocks for D x t_compute on the worker
        for w in weights:                                 # push: a gradient made on the worker
            w.assign_sub(tf.fill(tf.shape(w), lr))
        pulled = tf.add_n([tf.reduce_sum(tf.identity(w)) for w in weights])  # pull: the weights back
        updates.assign_add(1)
        return pulled

    def run(n: int) -> None:
        for _ in range(n * num_workers):
            coordinator.schedule(step, args=(iterator,))

    run(cfg.warmup_steps)
    coordinator.join()
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        samples.append((time.monotonic() / D, int(updates.numpy())))

    def sampler() -> None:  # the global update counter over wall time, while every worker is busy
        while not stop.wait(max(0.02, plan["t_compute_s"] * D / 16)):  # fine enough to place each jump
            sample()

    sample()
    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    total0 = samples[0][1] + cfg.steps * num_workers
    run(cfg.steps)
    coordinator.join()
    stop.set()
    thread.join()
    # the tail, when workers have run out of scheduled steps, is not the cluster's rate
    busy = [s for s in samples if s[1] <= total0 - num_workers] or samples
    # The counter is a staircase: each worker's update is a jump, the workers' jumps interleave at any
    # phase, and the first jump after the warm-up comes early (0.07 of a 0.26 s step: the worker's next
    # element, sleep included, was ready). Window rates between jumps were biased up by +20% to +100% in
    # 6-step runs (CI 2026-11-29), so the rate is the least-squares slope through the counter's jumps from
    # the first on (sampled 16 times a step; record.staircase_rate), its SE the fit's.
    first = next((i for i in range(1, len(busy)) if busy[i][1] != busy[i - 1][1]), 0)
    thr = record.throughput([busy[first:]], cfg.per_worker_batch)
    thr.update(record.staircase_rate(busy[first:], cfg.per_worker_batch))
    paper = dil.paper_workload(cfg.head)
    link = record.link_info()
    rec = record.base_record(cfg, mode="async", run_id=cfg.run_id, started_at=started_at)
    rec.update({
        "num_workers": num_workers, "num_ps": num_ps, "global_batch": cfg.per_worker_batch,
        "num_classes": dil.CLASSES, "steps": int(updates.numpy()), "warmup_steps": cfg.warmup_steps * num_workers,
        **thr, "train_gflop_per_img": paper["train_gflop_per_img"],
        "achieved_gflops": thr["images_per_sec"] * paper["train_gflop_per_img"] if thr["images_per_sec"] else None,
        "mfu": None, "trainable_params": paper["params"], "gradient_bytes": 4 * sum(dil.grad_counts(cfg.head)),
        "hosts": sorted({a.split(":")[0] for t in jobs.values() for a in t} | {socket.gethostname()}),
        "engine": "tf.distribute.ParameterServerStrategy", "cluster_source": source,
        "finished_at": record.now_iso(),
        "dilation": {"D": D, "K": K, "profile": cfg.profile, "delay": "dataset_sleep",
                     "t_compute_s": plan["t_compute_s"], "t_compute_source": plan["t_compute_source"],
                     "ranks": num_workers, "ps": num_ps, "link_rate": link["rate"],
                     "nodes": len({a.split(":")[0] for a in jobs["worker"]}),
                     "link_Bps_shaped": dil.rate_Bps(link["rate"]), "emulated_link_Bps": plan["link_Bps"],
                     "grad_tensors": len(sent), "grad_bytes_full": 4 * sum(dil.grad_counts(cfg.head)),
                     "grad_bytes_sent": 4 * sum(sent), "controller": "grpc", "samples": len(busy)},
    })
    record.append_record(cfg.runs_path, rec)
    print(f"{PROG}: record {cfg.run_id} -> {cfg.runs_path}: {rec['images_per_sec'] or 0:.1f} emulated images/sec "
          f"on {num_workers} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
