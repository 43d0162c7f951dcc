"""Epoch checkpoints that are never half-read: written under a temp name, then renamed into place.

Layout: DIR/epoch-0003/{ckpt.index, ckpt.data-*, meta.json}. meta.json holds the epoch and what
is needed to rebuild the model (train.evaluate uses it).
"""
from __future__ import annotations

import json
import os
import re
import shutil

import tensorflow as tf

_NAME = re.compile(r"^epoch-(\d{4,})$")


def latest(directory: str) -> tuple[int, str] | None:
    """(epoch, path) of the newest complete checkpoint in `directory`, or None."""
    if not directory or not os.path.isdir(directory):
        return None
    done = [(int(m.group(1)), os.path.join(directory, n)) for n in os.listdir(directory)
            if (m := _NAME.match(n)) and os.path.isfile(os.path.join(directory, n, "meta.json"))]
    return max(done) if done else None


def model_meta(cfg, num_classes: int) -> dict:
    return {"head": cfg.head, "width": cfg.width, "image_size": cfg.image_size, "num_classes": num_classes}


def save(directory: str, epoch: int, checkpoint: tf.train.Checkpoint, meta: dict, keep: int = 2) -> str:
    """Write epoch `epoch` atomically: a temp dir, then one rename. Keeps the newest `keep`."""
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, f"epoch-{epoch:04d}")
    tmp = os.path.join(directory, f".tmp-epoch-{epoch:04d}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint.write(os.path.join(tmp, "ckpt"))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({**meta, "epoch": epoch}, f)
        f.flush()
        os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    for n in sorted(n for n in os.listdir(directory) if _NAME.match(n))[:-keep]:
        shutil.rmtree(os.path.join(directory, n), ignore_errors=True)
    # a run killed while writing leaves its temp dir behind; one writer a directory, so any other is stale
    for n in os.listdir(directory):
        if n.startswith(".tmp-epoch-"):
            shutil.rmtree(os.path.join(directory, n), ignore_errors=True)
    return final


def restore(path: str, checkpoint: tf.train.Checkpoint):
    """Load a checkpoint written by save(); optimizer slots are restored when first created.
    Returns the load status (call .assert_existing_objects_matched() to insist every weight loaded)."""
    return checkpoint.read(os.path.join(path, "ckpt")).expect_partial()


class EpochCheckpoint(tf.keras.callbacks.Callback):
    """Saves model + optimizer (its step and slots) after every epoch, on the writer only."""

    def __init__(self, directory: str, checkpoint: tf.train.Checkpoint, meta: dict, is_writer: bool = True):
        super().__init__()
        self.directory, self.checkpoint, self.meta, self.is_writer = directory, checkpoint, meta, is_writer

    def on_epoch_end(self, epoch, logs=None):
        if self.is_writer:
            save(self.directory, epoch + 1, self.checkpoint, self.meta)
