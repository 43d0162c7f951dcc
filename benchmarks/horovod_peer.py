"""The peer: Horovod's own Keras synthetic benchmark, edited only to train cnn11 at our batch, threads and pinning.

Shape of horovod/examples/tensorflow2/tensorflow2_keras_synthetic_benchmark.py (Horovod 0.28.1): one
random batch cached and repeated, `hvd.DistributedOptimizer(tf.optimizers.SGD(0.01))`, compile with
`experimental_run_tf_function=False` and no metrics, callbacks = broadcast + metric average, `fit` with
`num_batches_per_iter` steps per epoch for `num_iters` epochs, the first epoch skipped as warm-up.
Horovod's own defaults everywhere (this file sets no HOROVOD_* variable).

What we add: the images/sec is measured as the trainers measure it, from the change of the optimizer's
step over wall time after the warm-up epoch (global batch per step), and written as one JSON line to --out
by rank 0, so `benchmarks/sync_overhead.py` reads it like every other run.

    horovodrun --gloo -np 2 -H localhost:2 python benchmarks/horovod_peer.py --out peer.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from timeit import default_timer as timer

import tensorflow as tf
import horovod.tensorflow.keras as hvd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train.model import cnn11  # noqa: E402  (the same model as the trainers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64, help="input batch size per rank")
    ap.add_argument("--num-batches-per-iter", type=int, default=10)
    ap.add_argument("--num-iters", type=int, default=4, help="epochs; the first is warm-up")
    ap.add_argument("--intra-op-threads", type=int, default=1)
    args = ap.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)  # ours: same threads

    hvd.init()
    model = cnn11((args.image_size, args.image_size, 3), 10, "gap", args.width)  # ours: cnn11, 10 classes
    opt = tf.optimizers.SGD(0.01)
    data = tf.random.uniform([args.batch_size, args.image_size, args.image_size, 3])
    target = tf.random.uniform([args.batch_size, 1], minval=0, maxval=9, dtype=tf.int64)
    dataset = tf.data.Dataset.from_tensor_slices((data, target)).cache().repeat().batch(args.batch_size)
    opt = hvd.DistributedOptimizer(opt, compression=hvd.Compression.none)
    model.compile(loss=tf.losses.SparseCategoricalCrossentropy(from_logits=True), optimizer=opt,
                  experimental_run_tf_function=False)
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0), hvd.callbacks.MetricAverageCallback()]

    class TimingCallback(tf.keras.callbacks.Callback):
        """Horovod's timing callback, measuring the optimizer's step instead of counting batches."""

        def on_train_begin(self, logs=None):
            self.rates: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.i0 = timer(), int(self.model.optimizer.iterations.numpy())

        def on_epoch_end(self, epoch, logs=None):
            steps = int(self.model.optimizer.iterations.numpy()) - self.i0
            if epoch > 0:  # skip warm up epoch, as Horovod's example does
                self.rates.append(steps * args.batch_size * hvd.size() / (timer() - self.t0))

    timing = TimingCallback()
    if hvd.rank() == 0:
        callbacks.append(timing)
    model.fit(dataset, batch_size=args.batch_size, steps_per_epoch=args.num_batches_per_iter,
              callbacks=callbacks, epochs=args.num_iters, verbose=0)
    if hvd.rank() == 0:
        rates = timing.rates
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps({"mode": "horovod_peer", "num_workers": hvd.size(),
                                "images_per_sec": sum(rates) / len(rates), "epoch_rates": rates}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
