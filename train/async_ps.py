"""Asynchronous data-parallel cnn11 training: TensorFlow's ParameterServerStrategy (DistBelief-style).

Local cluster (S PS + N workers on 127.0.0.1, the chief in this process), or one task of a cluster
described by TF_CONFIG or a SLURM step (every task runs the same command):
    python -m train.async_ps --workers 2 --ps 1 --dataset synthetic --epochs 2
Every line that exists only because of the parameter-server method is tagged `# PS:`.
"""
from __future__ import annotations

import os
import socket
import sys
import traceback

import tensorflow as tf

from train import checkpoint, data, measure, private_net, ps_cluster, ps_meter, record  # PS: ps_*, private_net
from train.config import ConfigError, parse_config
from train.model import cnn11

PROG = "train.async_ps"
MIN_SHARD_BYTES = 64 << 10  # PS: variables above 64 KiB are split over the PS shards


def main(argv: list[str] | None = None) -> int:
    from_command_line, argv = argv is None, sys.argv[1:] if argv is None else list(argv)  # PS: passed on
    cfg, extra = parse_config(argv, arm="async", prog=PROG, extra=ps_cluster.extra_parser())
    started_at = record.now_iso()
    if cfg.compression != "none":  # PS: the strategy pushes fp32 gradients, say so instead of faking it
        return measure.bad_input(PROG, f"--compression {cfg.compression}: {ps_meter.NO_COMPRESSION}")
    if from_command_line and extra.private_net == "auto" and ps_cluster.source(extra.cluster) == "local":  # PS:
        private_net.reexec_isolated(["-m", "train.async_ps", *argv])  # PS: nothing reachable from outside
    local = None  # PS: the cluster: local launcher, TF_CONFIG or SLURM; workers and PS only serve
    try:
        with ps_cluster.cluster(extra.cluster, cfg, argv) as (resolver, local, source):
            if resolver.task_type in ("worker", "ps"):
                return ps_cluster.serve(resolver, cfg.intra_op_threads)
            code = chief(cfg, resolver, local, source, started_at)
    except ConfigError as e:
        code = measure.bad_input(PROG, e)
    except (ps_cluster.Terminated, KeyboardInterrupt) as e:
        print(f"{PROG}: {'terminated' if isinstance(e, ps_cluster.Terminated) else 'interrupted'}; "
              "cluster torn down", file=sys.stderr)
        code = 143 if isinstance(e, ps_cluster.Terminated) else 130
    except Exception as e:  # PS: e.g. a PS lost: the traceback, then one line naming it; no record
        traceback.print_exc()
        first_line = (str(e).strip().splitlines() or [""])[0]
        print(f"{PROG}: error: run failed: {type(e).__name__}: {first_line}", file=sys.stderr)
        code = 1
    if local and from_command_line:  # PS: skip TF's exit-time calls to the tasks just stopped
        sys.stdout.flush(), sys.stderr.flush(), os._exit(code)
    return code


def chief(cfg, resolver, launcher, source: str, started_at: str) -> int:  # PS: the coordinator
    jobs = resolver.cluster_spec().as_dict()  # PS:
    num_workers, num_ps = len(jobs["worker"]), len(jobs["ps"])  # PS:
    run_id = cfg.run_id or record.default_run_id()
    peak = measure.set_up(cfg)

    spec = measure.dataset_spec(PROG, cfg)
    if spec is None:
        return 2
    steps_per_epoch = data.steps_per_epoch(cfg, spec, 1)  # PS: a scheduled step is one worker's batch
    global_batch = cfg.per_worker_batch  # PS: every update is one worker's batch (no barrier)
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(  # PS:
        min_shard_bytes=MIN_SHARD_BYTES, max_shards=num_ps)
    strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)  # PS:
    train_ds = tf.keras.utils.experimental.DatasetCreator(data.ps_dataset_fn(cfg))  # PS: per worker
    eval_ds = data.eval_dataset(cfg)  # PS: evaluated on the chief, on a local copy of the weights

    def make_model():
        return cnn11((cfg.image_size, cfg.image_size, 3), spec.num_classes, cfg.head, cfg.width)

    with strategy.scope():  # PS: variables live on the PS shards
        model = ps_meter.staleness_model(make_model(), ps_meter.StalenessLog())  # PS: staleness step
        optimizer = measure.sgd(cfg.lr, cfg.momentum,  # PS: no lr scaling: every update is one worker's batch
                                warmup_updates=round(cfg.lr_warmup_epochs * steps_per_epoch))
        measure.compile_model(model, optimizer)

    state = tf.train.Checkpoint(model=model, optimizer=optimizer)
    resume = checkpoint.latest(cfg.checkpoint_dir)  # (epoch, path) of the last complete checkpoint
    initial_epoch = resume[0] if resume else 0
    if resume:
        with strategy.scope():  # PS: restored straight into the PS shards
            checkpoint.restore(resume[1], state)
    evaluate = None if eval_ds is None else ps_meter.local_evaluator(make_model, eval_ds)  # PS: on the chief
    meter = ps_meter.IterationSampler(cfg.warmup_steps, images_per_step=global_batch, evaluate=evaluate)
    callbacks = [meter]
    if cfg.checkpoint_dir:
        callbacks.append(checkpoint.EpochCheckpoint(cfg.checkpoint_dir, state,
                                                    checkpoint.model_meta(cfg, spec.num_classes)))
    model.fit(train_ds, epochs=cfg.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
              callbacks=callbacks, verbose=measure.verbosity())

    applied = int(optimizer.iterations.numpy())  # PS: updates applied (a retried step may count twice)
    digest = measure.weights_digest(ps_meter.local_copy(model, make_model))  # PS: one copy, on the PS
    alive = ps_meter.workers_alive(num_workers)  # PS: which workers still answer
    return measure.write_record(
        PROG, cfg, mode="async", run_id=run_id, started_at=started_at, meter=meter,
        num_classes=spec.num_classes, num_workers=num_workers, global_batch=global_batch,
        steps=applied, peak=peak,
        fields={"num_ps": num_ps, "hosts": sorted({a.split(":")[0] for t in jobs.values() for a in t}
                                                  | {socket.gethostname()}), "weights_sha256": [digest],
                "resumed_from_epoch": initial_epoch or None,
                "engine": "tf.distribute.ParameterServerStrategy", "cluster_source": source,  # PS:
                "private_net": private_net.inside(),  # PS: loopback-only network namespace
                "shard_layout": ps_meter.shard_layout(model, num_ps, MIN_SHARD_BYTES),  # PS:
                "applied_updates": applied, "scheduled_steps": (cfg.epochs - initial_epoch) * steps_per_epoch,  # PS:
                "staleness": model.staleness.summary(),  # PS:
                "workers_lost": alive.count(False), "workers_alive": alive,  # PS:
                "launcher_exits": launcher.exited() if launcher else None,  # PS: e.g. {"worker:1": -9}
                "compression_supported": False, "compression_note": ps_meter.NO_COMPRESSION})  # PS:


if __name__ == "__main__":
    sys.exit(main())
