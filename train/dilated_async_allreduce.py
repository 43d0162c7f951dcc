"""The time-dilated async all-reduce arm (issues 14 and 16): the seed's own method (train/async_allreduce.py) on
the emulated cluster. One process per rank, under srun --mpi=pmix (MPI) or horovodrun (Gloo).

    horovodrun --gloo -np 2 -H localhost:2 python -m train.dilated_async_allreduce --profile tsubame2.5 \
        --dilation 20 --byte-dilation 64 --study S --results-dir results --run-id R

As train/async_allreduce.py, with computation replaced by sleeps: the compute loop sleeps D x t_compute per
sub-batch (t_compute of the profile, drawn with its step_cv as the sync arm's) and adds the sub-batch to a local
count; it never waits for the network. A communication thread repeatedly takes what accumulated, all-reduces
cnn11's real gradient tensors (each 1/K of its size, Horovod's grouped allreduce; fusion threshold / K, cycle
time x D as the sync arm) with the count, and "applies" the update: the sub-batches in each update (effective
mini-batch) and each one's staleness (updates between the version it was computed on and its application) are
counted exactly. Nothing is learned: the update changes no weights.

images/sec (emulated) = applied sub-batches x batch / (elapsed / D): the least-squares slope of (time, sub-batches
applied) sampled at each update while every rank computes, after the warm-up; updates/sec (emulated) likewise
from the update count. The model's
all-reduce time (compare/scaling.py) predicts the update period max(t_allreduce, t_compute) and the effective
mini-batch; compute never waiting predicts p x batch / t_compute images/sec.
"""
from __future__ import annotations

import socket
import sys
import threading
import time
from types import SimpleNamespace

from compare import dilated as dil
from train import record
from train.dilated_step import _cpu_s, compute_scales, dilated_record, parse, rank_plan

PROG = "train.dilated_async_allreduce"


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv, PROG, __doc__, delays=False)
    started_at = record.now_iso()
    plan, cv = rank_plan(cfg)
    D, K = cfg.dilation, cfg.byte_dilation

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    import horovod.tensorflow as hvd

    hvd.init()
    p, rank = hvd.size(), hvd.rank()
    sent = dil.dilated_counts(dil.grad_counts(cfg.head), K)
    grads = [tf.ones([n]) for n in reversed(sent)]  # Async: what an update sends (content unused), backward order
    scales = compute_scales(cfg, rank, cv)
    t_c = plan["t_compute_s"] * D

    cond = threading.Condition()  # Async: guards the count: compute adds, the comm thread takes
    s = SimpleNamespace(count=0, versions=[], done=False, version=0, applied=0, sizes=[], staleness=[],
                        allreduce_s=[], samples=[], measuring=False, any_done=False, error=None)

    def communicate() -> None:  # Async: the communication thread, as train/async_allreduce.py's
        try:
            while True:
                with cond:
                    cond.wait_for(lambda: s.count or s.done)
                    versions, done = s.versions, s.done
                    s.count, s.versions = 0, []
                t0 = time.monotonic()
                meta = tf.constant([len(versions), float(done)], tf.float32)  # sub-batches, finished ranks
                reduced = hvd.grouped_allreduce(grads + [meta], op=hvd.Sum)
                k, finished = (int(x) for x in reduced[-1].numpy())
                if float(reduced[0][0]) != p:
                    raise RuntimeError(f"the allreduce summed to {float(reduced[0][0]):g}, not {p}")
                s.allreduce_s.append((time.monotonic() - t0) / D)
                if k:
                    s.staleness += [s.version - v for v in versions]
                    s.version += 1
                    s.sizes.append(k)
                    s.applied += k
                    if s.measuring and not finished:  # steady state: every rank past warm-up, none finished
                        s.samples.append((time.monotonic() / D, s.applied, s.version))
                s.any_done = s.any_done or finished > 0
                if finished == p:
                    return
        except Exception as e:  # e.g. a lost rank: the compute loop re-raises it
            s.error = e
            with cond:
                cond.notify_all()

    hvd.allreduce(tf.zeros([1]), name="dilated_barrier").numpy()  # every rank starts computing together
    comm = threading.Thread(target=communicate, name="async-allreduce", daemon=True)
    comm.start()
    cpu0, wall0 = _cpu_s(), time.monotonic()
    compute_samples, t_next = [], wall0
    for step in range(cfg.warmup_steps + cfg.steps):
        if s.error:
            raise RuntimeError(f"{PROG}: the communication thread failed") from s.error
        version = s.version  # the weights this sub-batch is "computed" on
        t_next += scales[step] * t_c  # the emulated GPU computes back to back: host lateness does not accumulate
        time.sleep(max(0.0, t_next - time.monotonic()))
        with cond:  # Async: held only for the add; never waits for the network
            s.count += 1
            s.versions.append(version)
            cond.notify()
        if step >= cfg.warmup_steps and not s.any_done:
            compute_samples.append((time.monotonic() / D, step))
        if step == cfg.warmup_steps:  # this rank is past its warm-up; a collective would stall compute, so the
            s.measuring = True         # window opens at the writer's warm-up (the ranks start together)
    with cond:  # this rank is done; the comm thread sends the rest and ends when all ranks are done
        s.done = True
        cond.notify()
    comm.join()
    if s.error:
        raise RuntimeError(f"{PROG}: the communication thread failed") from s.error
    wall, cpu = time.monotonic() - wall0, _cpu_s() - cpu0

    per_rank = hvd.allgather_object({"host": socket.gethostname(), "cpu_s": cpu, "wall_s": wall,
                                     "affinity": record.cpu_affinity(), "staleness": s.staleness,
                                     "compute_ips": record.throughput([compute_samples],
                                                                      cfg.per_worker_batch)["images_per_sec"]})
    controller = "mpi" if hvd.mpi_enabled() and not hvd.gloo_enabled() else "gloo"
    if rank != 0:
        return 0
    thr = record.throughput([[(t, n) for t, n, _ in s.samples]], cfg.per_worker_batch)  # step times, counts
    thr.update(record.staircase_rate([(t, n) for t, n, _ in s.samples], cfg.per_worker_batch))
    rec = dilated_record(cfg, "async_allreduce", started_at, plan, thr, per_rank, cv, controller, wall,
                         cfg.warmup_steps + cfg.steps)
    compute = [r["compute_ips"] for r in per_rank]
    rec.update({"updates": s.version, "sub_batches": s.applied, "effective_batch": record.summarize(s.sizes),
                "staleness": record.summarize([x for r in per_rank for x in r["staleness"]]),
                "updates_per_sec": record.staircase_rate([(t, v) for t, _, v in s.samples], 1)["images_per_sec"],
                "compute_images_per_sec": sum(compute) if None not in compute else None,
                "allreduce_s": record.summarize(s.allreduce_s)})  # emulated seconds per all-reduce
    record.append_record(cfg.runs_path, rec)
    print(f"{PROG}: record {cfg.run_id} -> {cfg.runs_path}: {rec['images_per_sec'] or 0:.1f} emulated images/sec, "
          f"{rec['updates_per_sec'] or 0:.2f} updates/sec on {p} ranks (D={D:g}, K={K})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
