"""Synchronous data-parallel cnn11 training: Horovod ring-allreduce.

Run one process per GPU (or CPU slot) under horovodrun, mpirun or `srun --mpi=pmix`:
    horovodrun -np 2 python -m train.sync_allreduce --dataset synthetic --epochs 2
Every line that exists only because of distribution is tagged `# Horovod:`.
"""
from __future__ import annotations

import socket
import sys

import tensorflow as tf
import horovod.tensorflow.keras as hvd  # Horovod:
from horovod.tensorflow import allgather_object, broadcast_object  # Horovod:

from train import checkpoint, compression, data, measure, record
from train.config import parse_config
from train.model import cnn11

PROG = "train.sync_allreduce"


class AverageBatchNormStatistics(tf.keras.callbacks.Callback):
    """Horovod: allreduce only averages gradients; average BN moving statistics before every
    evaluation and at the end, so all ranks evaluate, and finish with, the same model."""

    def _average(self) -> None:
        for v in self.model.non_trainable_variables:
            v.assign(hvd.allreduce(v, op=hvd.Average))

    def on_test_begin(self, logs=None):
        self._average()

    def on_train_end(self, logs=None):
        self._average()


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_config(argv, arm="sync", prog=PROG)
    started_at = record.now_iso()
    peak = measure.set_up(cfg)  # before hvd.init starts TensorFlow's runtime

    # Horovod: one process per device; pin one GPU per local rank when there are GPUs.
    horovod_settings = measure.horovod_defaults()  # Horovod: cycle time on CPU ranks, user's values win
    hvd.init()
    measure.pin_gpu(hvd.local_rank())  # Horovod:
    num_workers, rank = hvd.size(), hvd.rank()  # Horovod:
    run_id = broadcast_object(cfg.run_id or record.default_run_id(), root_rank=0)  # Horovod:

    spec = measure.dataset_spec(PROG, cfg)
    if spec is None:
        return 2
    steps_per_epoch = data.steps_per_epoch(cfg, spec, num_workers)
    global_batch = cfg.per_worker_batch * num_workers
    train_ds = data.train_dataset(cfg, num_shards=num_workers, shard_index=rank)  # Horovod: rank's shard
    eval_ds = data.eval_dataset(cfg)
    if eval_ds is not None:
        eval_ds = eval_ds.unbatch().shard(num_workers, rank).batch(cfg.per_worker_batch)  # Horovod:

    model = cnn11((cfg.image_size, cfg.image_size, 3), spec.num_classes, cfg.head, cfg.width)
    lr = cfg.lr * num_workers  # Horovod: linear learning-rate scaling with the worker count
    optimizer, wire = compression.distributed_optimizer(  # Horovod: allreduce (or compressed exchange)
        measure.sgd(lr, cfg.momentum), cfg.compression, model.trainable_variables, steps_per_epoch)
    measure.compile_model(model, optimizer)

    state = tf.train.Checkpoint(model=model, optimizer=optimizer)
    # Horovod: rank 0 picks the newest complete checkpoint (epoch, path); every rank loads it.
    resume = broadcast_object(checkpoint.latest(cfg.checkpoint_dir), root_rank=0)
    initial_epoch = resume[0] if resume else 0
    if resume:
        checkpoint.restore(resume[1], state)
    meter = measure.StepMeter(cfg.warmup_steps, images_per_step=global_batch)
    callbacks = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),  # Horovod: same initial weights everywhere
        hvd.callbacks.MetricAverageCallback(),  # Horovod: logs averaged over ranks
        AverageBatchNormStatistics(),  # Horovod: BN moving statistics are per rank until averaged
    ]
    if cfg.lr_warmup_epochs:  # Horovod: ramp up to the scaled learning rate
        callbacks.append(hvd.callbacks.LearningRateWarmupCallback(
            initial_lr=lr, warmup_epochs=cfg.lr_warmup_epochs, steps_per_epoch=steps_per_epoch))
    callbacks.append(meter)
    callbacks.append(wire)  # Horovod: bytes handed to Horovod, compress time
    if cfg.checkpoint_dir:
        callbacks.append(checkpoint.EpochCheckpoint(cfg.checkpoint_dir, state,
                                                    checkpoint.model_meta(cfg, spec.num_classes),
                                                    is_writer=rank == 0))  # Horovod: rank 0 writes
    model.fit(train_ds, epochs=cfg.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
              validation_data=eval_ds, callbacks=callbacks, verbose=measure.verbosity(rank == 0))

    digests = allgather_object(measure.weights_digest(model))  # Horovod: ranks must agree
    hosts = allgather_object(socket.gethostname())  # Horovod:
    affinities = allgather_object(record.cpu_affinity())  # Horovod: every rank's cores, not just the writer's
    if rank != 0:  # Horovod: rank 0 alone writes the record
        return 0
    return measure.write_record(
        PROG, cfg, mode="sync", run_id=run_id, started_at=started_at, meter=meter,
        num_classes=spec.num_classes, num_workers=num_workers, global_batch=global_batch,
        steps=int(optimizer.iterations.numpy()), peak=peak,
        fields={"num_ps": 0, "hosts": sorted(set(hosts)), "rank_cpu_affinity": affinities,
                "weights_sha256": digests, "resumed_from_epoch": initial_epoch or None, "engine": "horovod",
                "horovod_controller": "mpi" if hvd.mpi_enabled() else "gloo",  # Horovod:
                "horovod_settings": horovod_settings,  # Horovod: the settings in effect and their source
                **wire.record_fields()})  # Horovod: bytes sent/received per step, ratio, compress time


if __name__ == "__main__":
    sys.exit(main())
