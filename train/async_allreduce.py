"""Asynchronous all-reduce cnn11 training, the seed's own method (SPRINT): compute never waits for the network.

Each rank's main thread computes sub-batch gradients on a snapshot of the weights and adds them to a local
accumulator; a communication thread repeatedly takes whatever has accumulated, sums it over all ranks with
one Horovod grouped allreduce (with the sub-batch counts) and applies the update. Every rank applies the
same updates in the same order, so the weights stay identical. Run it like the sync trainer:
    horovodrun -np 2 python -m train.async_allreduce --dataset synthetic --epochs 2
Every line that exists only because of distribution is tagged `# Async:`.
"""
from __future__ import annotations

import socket
import sys
import threading
import time
from types import SimpleNamespace

import tensorflow as tf
import horovod.tensorflow as hvd  # Async:
from horovod.tensorflow import allgather_object, broadcast_object  # Async:

from train import checkpoint, data, measure, record
from train.config import parse_config
from train.model import cnn11

# Async: an update summing k sub-batches (over all ranks) applies their mean gradient at one of these rates;
# k = number of workers is the sync arm's step under both. `linear` follows the effective batch all the way
# (a large k, e.g. the first update or a slow link, is one big extrapolated step); `capped` stops at the sync
# arm's step, so a larger effective batch averages more sub-batches instead of stepping further.
LR_RULES = {"linear": "linear: lr = base_lr * k (k sub-batches in the update = effective_batch / per_worker_batch)",
            "capped": "capped: lr = base_lr * min(k, workers) (k sub-batches in the update; at most the sync step)"}


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_config(argv, arm="async_allreduce", prog="train.async_allreduce")
    started_at = record.now_iso()
    measure.configure_threads(cfg.intra_op_threads)  # before anything starts TensorFlow's runtime
    measure.set_precision(cfg.precision)

    hvd.init()  # Async: one process per device, as the sync arm
    measure.pin_gpu(hvd.local_rank())  # Async: one GPU per local rank, when there are GPUs
    num_workers, rank = hvd.size(), hvd.rank()  # Async:
    is_writer = rank == 0  # Async: rank 0 alone evaluates and writes the record
    run_id = broadcast_object(cfg.run_id or record.default_run_id(), root_rank=0)  # Async:

    tf.keras.utils.set_random_seed(cfg.seed)
    try:
        if cfg.precision == "mixed_fp16":
            raise ValueError("--precision mixed_fp16 needs loss scaling, which this trainer lacks; "
                             "use fp32 or mixed_bf16")
        if cfg.compression not in ("none", "fp16"):  # Async: train/compression.py's stateful methods are sync's
            raise ValueError(f"--compression {cfg.compression}: this trainer has Horovod's fp16 hook only; "
                             "use none or fp16")
        spec = data.describe(cfg)
    except (ValueError, OSError) as e:
        print(f"train.async_allreduce: error: {e}", file=sys.stderr)
        return 2
    steps_per_epoch = data.steps_per_epoch(cfg, spec, num_workers)  # sub-batches per rank per epoch
    global_batch = cfg.per_worker_batch * num_workers  # nominal; the effective batch is measured
    batches = iter(data.train_dataset(cfg, num_shards=num_workers, shard_index=rank))  # Async: rank's shard
    eval_ds = data.eval_dataset(cfg) if is_writer else None  # Async: rank 0 evaluates the whole split

    shape = (cfg.image_size, cfg.image_size, 3)
    model = cnn11(shape, spec.num_classes, cfg.head, cfg.width)  # the weights; only the comm thread steps them
    worker = cnn11(shape, spec.num_classes, cfg.head, cfg.width)  # Async: compute copy + this rank's BN stats
    for m in (model, worker):  # compiled for evaluate() only
        m.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="top1"),
                           tf.keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")])
    lr = tf.Variable(cfg.lr, trainable=False, dtype=tf.float32)  # Async: set per update (LR_RULES)
    optimizer = tf.keras.optimizers.legacy.SGD(learning_rate=lr, momentum=cfg.momentum)
    seen = tf.Variable(0.0, trainable=False)  # Async: sub-batches applied so far, all ranks
    warmup_sub_batches = cfg.lr_warmup_epochs * steps_per_epoch * num_workers
    optimizer._create_all_weights(model.trainable_variables)  # slots made here, not inside the comm thread
    # Async: rank 0 picks the newest complete checkpoint; every rank loads it (the weights of one update, the
    # optimizer's slots and step, the sub-batches seen). Sub-batches accumulated but not yet applied when the
    # job died are lost, as an update in flight on any asynchronous cluster.
    state = tf.train.Checkpoint(model=model, optimizer=optimizer, seen=seen)
    ckpt_meta = checkpoint.model_meta(cfg, spec.num_classes)
    resume = broadcast_object(checkpoint.latest(cfg.checkpoint_dir), root_rank=0)  # Async:
    initial_epoch = resume[0] if resume else 0
    if resume:
        checkpoint.restore(resume[1], state).assert_existing_objects_matched()
    acc = [tf.Variable(tf.zeros_like(v), trainable=False) for v in model.trainable_variables]  # Async:
    compression = hvd.Compression.fp16 if cfg.compression == "fp16" else hvd.Compression.none  # Async:
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(autograph=False)  # Async: traced before the comm thread starts (below)
    def refresh() -> None:  # Async: the compute copy takes the current weights (caller holds weights_lock)
        for w, m in zip(worker.trainable_variables, model.trainable_variables):
            w.assign(m)

    @tf.function(autograph=False)  # Async: traced before the comm thread starts (below)
    def compute(images: tf.Tensor, labels: tf.Tensor):
        with tf.GradientTape() as tape:
            logits = worker(images, training=True)
            loss = loss_fn(labels, logits)
        hits = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32))
        return loss, hits, tape.gradient(loss, worker.trainable_variables)

    @tf.function(autograph=False)  # Async: traced before the comm thread starts (below)
    def accumulate(grads: list) -> None:  # Async: caller holds `cond`
        for a, g in zip(acc, grads):
            a.assign_add(tf.cast(g, a.dtype))

    @tf.function(autograph=False)  # Async: traced before the comm thread starts (below)
    def take() -> list:  # Async: the accumulated sum, leaving zeros behind (caller holds `cond`)
        out = [tf.identity(a) for a in acc]  # a read is a snapshot: the assign below cannot change it
        for a in acc:
            a.assign(tf.zeros_like(a))
        return out

    @tf.function(autograph=False)  # Async: traced before the comm thread starts (below)
    def apply(summed: list, k: tf.Tensor) -> None:  # Async: mean gradient of k sub-batches (LR_RULES)
        seen.assign_add(k)  # warm-up (--lr-warmup-epochs) counts sub-batches: updates vary in size here
        ramp = tf.minimum(1.0, seen / warmup_sub_batches) if warmup_sub_batches else 1.0
        lr.assign(ramp * cfg.lr * (k if cfg.lr_rule == "linear" else tf.minimum(k, float(num_workers))))
        optimizer.apply_gradients(zip([s / k for s in summed], model.trainable_variables))

    cond = threading.Condition()  # Async: guards the accumulator: compute adds, the comm thread takes
    weights_lock = threading.Lock()  # Async: an update lands whole, never in the middle of a snapshot
    s = SimpleNamespace(count=0, versions=[], done=False, version=0, applied=0, sizes=[], staleness=[],  # Async:
                        allreduce_s=[], segments=[[]], measuring=False, resume_at=0, any_done=False,  # Async:
                        error=None)

    def communicate() -> None:  # Async: the communication thread
        try:
            while True:
                with cond:  # held only for the swap
                    cond.wait_for(lambda: s.count or s.done)  # nothing to send yet: wait for compute
                    summed, versions, done = take(), s.versions, s.done
                    s.count, s.versions = 0, []
                if cfg.comm_delay_ms:  # emulated slow interconnect (a test/emulation knob)
                    time.sleep(cfg.comm_delay_ms / 1000)
                t0 = time.perf_counter()
                wire = [compression.compress(g) for g in summed]
                meta = tf.constant([len(versions), float(done)], tf.float32)  # sub-batches, finished ranks
                reduced = hvd.grouped_allreduce([w for w, _ in wire] + [meta], op=hvd.Sum)
                s.allreduce_s.append(time.perf_counter() - t0)
                k, finished = (int(x) for x in reduced[-1].numpy())
                if k:  # the same k, sum and order on every rank: the weights stay identical
                    with weights_lock:
                        apply([compression.decompress(r, c) for r, (_, c) in zip(reduced, wire)],
                              tf.constant(k, tf.float32))
                        s.staleness += [s.version - v for v in versions]
                        s.version += 1
                    s.sizes.append(k)
                    s.applied += k
                    if is_writer and s.measuring and not finished and s.version >= s.resume_at:  # steady state
                        s.segments[-1].append((time.perf_counter(), s.applied, s.version))
                s.any_done = s.any_done or finished > 0  # rates are measured while every rank computes
                if finished == num_workers:  # every rank's last sub-batch is in: all ranks stop here
                    return
        except Exception as e:  # e.g. a lost rank: the compute loop re-raises it
            s.error = e
            with cond:
                cond.notify_all()

    # Async: AutoGraph's conversion is not thread-safe: converting `take` in the comm thread while the main
    # thread converted another function once made the comm thread call the wrong one (TypeError, MPI run).
    # So: no AutoGraph (plain Python loops over lists), and everything traced here, before the thread starts.
    specs = [tf.TensorSpec(v.shape, v.dtype) for v in model.trainable_variables]
    refresh.get_concrete_function()
    compute.get_concrete_function(*batches.element_spec)
    accumulate.get_concrete_function(specs)
    take.get_concrete_function()
    apply.get_concrete_function(specs, tf.TensorSpec([], tf.float32))
    peak = measure.peak_gflops(cfg)  # all ranks at once: each gets its fair share of the machine
    # Async: same start everywhere; a collective, so every rank starts computing at the same moment
    hvd.broadcast_variables(model.variables + worker.variables, root_rank=0)
    comm = threading.Thread(target=communicate, name="async-allreduce", daemon=True)  # Async:
    comm.start()  # Async:
    t_start = time.perf_counter()
    curve, compute_segments, losses, hits = [], [[]], [], []
    blocked = 0.0  # Async: seconds the compute loop waited to take a lock the comm thread held
    first_step = initial_epoch * steps_per_epoch  # Async: a resumed run starts at its checkpoint's epoch
    for step in range(first_step, cfg.epochs * steps_per_epoch):
        if s.error:  # Async:
            raise RuntimeError("train.async_allreduce: the communication thread failed") from s.error
        images, labels = next(batches)
        t_wait = time.perf_counter()  # Async: how long compute waits for the comm thread's locks
        with weights_lock:  # Async:
            blocked += time.perf_counter() - t_wait  # Async:
            refresh()  # Async:
            version = s.version  # Async:
        loss, hit, grads = compute(images, labels)
        t_wait = time.perf_counter()  # Async:
        with cond:  # Async: a lock held only for the add; never waits for the network
            blocked += time.perf_counter() - t_wait  # Async:
            accumulate(grads)  # Async:
            s.count += 1  # Async:
            s.versions.append(version)  # Async:
            cond.notify()  # Async:
        losses.append(float(loss))
        hits.append(float(hit))
        if step >= first_step + cfg.warmup_steps and not s.any_done:  # warm-up: this rank's first sub-batches
            compute_segments[-1].append((time.perf_counter(), step))
            s.measuring = True
        epoch, end_of_epoch = divmod(step + 1, steps_per_epoch)
        if end_of_epoch == 0 and is_writer and epoch < cfg.epochs:  # the last point comes after the drain
            point = {"epoch": epoch, "wall_s": time.perf_counter() - t_start, "steps": s.version,
                     "images": s.applied * cfg.per_worker_batch, "loss": sum(losses) / len(losses),
                     "top1": sum(hits) / len(hits)}
            if eval_ds is not None:  # Async: on a snapshot, this rank's BN stats; other ranks go on computing
                s.measuring = False
                with weights_lock:
                    refresh()
                point.update({f"val_{k}": v for k, v in worker.evaluate(eval_ds, verbose=0, return_dict=True).items()})
                compute_segments.append([])
                s.segments.append([])
                # Async: the other ranks computed on during this evaluation; their backlog lands within the
                # next two updates (one already waiting in the allreduce, then the accumulator) and would
                # count as a burst of applied sub-batches: the rate resumes after it.
                with weights_lock:
                    s.resume_at = s.version + 2
                s.measuring = True
            curve.append(point)
            print(" ".join(f"{k}={v:.4g}" for k, v in point.items()), flush=True)
            if cfg.checkpoint_dir:  # Async: the weights of one whole update (the comm thread waits meanwhile)
                with weights_lock:
                    checkpoint.save(cfg.checkpoint_dir, epoch, state, ckpt_meta)
            losses, hits = [], []
    with cond:  # Async: this rank is done; the comm thread sends the rest and ends when all ranks are done
        s.done = True
        cond.notify()
    comm.join()  # Async:
    if s.error:  # Async:
        raise RuntimeError("train.async_allreduce: the communication thread failed") from s.error
    for m, w in zip(model.non_trainable_variables,  # Async: BN moving statistics averaged, as the sync arm
                    hvd.grouped_allreduce(worker.non_trainable_variables, op=hvd.Average)):
        m.assign(w)
    wall = time.perf_counter() - t_start

    digests = allgather_object(measure.weights_digest(model))  # Async: ranks must agree
    hosts = allgather_object(socket.gethostname())  # Async:
    affinities = allgather_object(record.cpu_affinity())  # Async: every rank's cores, not just the writer's
    staleness = allgather_object(s.staleness)  # Async: every rank's sub-batches, counted exactly
    blocked_fraction = allgather_object(blocked / (time.perf_counter() - t_start))  # Async: per rank
    compute_rates = allgather_object(record.throughput(compute_segments, cfg.per_worker_batch)["images_per_sec"])
    if not is_writer:
        return 0
    if cfg.checkpoint_dir:  # the final weights (BN statistics averaged), as the sync arm's last epoch
        checkpoint.save(cfg.checkpoint_dir, cfg.epochs, state, ckpt_meta)
    last = {"epoch": cfg.epochs, "wall_s": wall, "steps": s.version, "images": s.applied * cfg.per_worker_batch,
            "loss": sum(losses) / max(1, len(losses)), "top1": sum(hits) / max(1, len(hits))}
    if eval_ds is not None:  # the final model: BN statistics averaged, identical on every rank
        last.update({f"val_{k}": v for k, v in model.evaluate(eval_ds, verbose=0, return_dict=True).items()})
    curve.append(last)
    rec = record.base_record(cfg, mode="async_allreduce", run_id=run_id, started_at=started_at)
    tput = record.throughput([[(t, n) for t, n, _ in seg] for seg in s.segments], cfg.per_worker_batch)
    rec.update(measure.run_summary(cfg, tput, curve, spec.num_classes, num_workers, global_batch,
                                   steps=s.version, peak=peak))
    effective = record.summarize(s.sizes)  # Async: sub-batches per update, over all ranks
    rec.update({"num_ps": 0, "hosts": sorted(set(hosts)), "rank_cpu_affinity": affinities, "weights_sha256": digests,
                "resumed_from_epoch": initial_epoch or None, "engine": "horovod",
                "horovod_controller": "mpi" if hvd.mpi_enabled() else "gloo",
                "lr_rule": LR_RULES[cfg.lr_rule], "comm_delay_ms": cfg.comm_delay_ms, "updates": s.version,
                "sub_batches": s.applied, "effective_batch": effective,
                "effective_batch_images_mean": effective["mean"] * cfg.per_worker_batch if s.sizes else None,
                "staleness": record.summarize([x for part in staleness for x in part]),
                "updates_per_sec": record.throughput([[(t, v) for t, _, v in seg] for seg in s.segments],
                                                     1)["images_per_sec"],
                "compute_images_per_sec": sum(compute_rates) if None not in compute_rates else None,
                "compute_blocked_fraction": blocked_fraction,  # Async: share of each rank's run spent waiting
                "allreduce_s": record.summarize(s.allreduce_s)})
    record.append_record(cfg.runs_path, rec)
    print(f"record {run_id} -> {cfg.runs_path}: {rec['images_per_sec'] or 0:.1f} images/sec, {num_workers} workers, "
          f"effective batch {effective['mean'] or 0:.2f} sub-batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
