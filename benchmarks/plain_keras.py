"""The baseline the sync trainer is measured against: the same cnn11, data, optimizer and meter,
in a plain tf.keras fit with no Horovod at all. Writes one JSON line to --out."""
from __future__ import annotations

import argparse
import json
import sys

import tensorflow as tf

from train import data, measure
from train.config import RunConfig
from train.model import cnn11


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--per-worker-batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup-steps", type=int, default=5)
    args = ap.parse_args(argv)
    cfg = RunConfig(width=args.width, per_worker_batch=args.per_worker_batch, intra_op_threads=1,
                    steps_per_epoch=args.steps, warmup_steps=args.warmup_steps)
    measure.configure_threads(cfg.intra_op_threads)
    tf.keras.utils.set_random_seed(cfg.seed)
    spec = data.describe(cfg)
    model = cnn11((cfg.image_size, cfg.image_size, 3), spec.num_classes, cfg.head, cfg.width)
    model.compile(optimizer=tf.keras.optimizers.legacy.SGD(cfg.lr, momentum=cfg.momentum),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="top1"),
                           tf.keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")])
    meter = measure.StepMeter(cfg.warmup_steps, images_per_step=cfg.per_worker_batch)
    model.fit(data.train_dataset(cfg, 1, 0), epochs=1, steps_per_epoch=cfg.steps_per_epoch,
              callbacks=[meter], verbose=0)
    with open(args.out, "a") as f:
        f.write(json.dumps({"mode": "plain", "num_workers": 1, **meter.result()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
