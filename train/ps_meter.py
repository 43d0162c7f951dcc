"""What the parameter-server arm measures beyond the sync arm: staleness per applied update,
images/sec sampled from the chief, the shard layout of the variables, lost workers.

Keras' parameter-server `fit` allows epoch-level callbacks only, so images/sec comes from a chief
thread sampling `optimizer.iterations` (the global step on the PS) over wall time, never from the
scheduled steps (a scheduled step may run twice when a worker is lost).
"""
from __future__ import annotations

import re
import threading
import time

import numpy as np
import tensorflow as tf

from train import measure, record

NO_COMPRESSION = ("ParameterServerStrategy exposes no hook for it, so there is no gradient compression here: "
                  "workers push fp32 gradients to the PS by the variables' own apply ops (use --compression "
                  "none; compression is in the sync arm)")
STALENESS_BINS = 1024  # exact counts 0..1022; the last bin holds everything >= 1023


class StalenessLog:
    """An exact histogram of staleness, one count per applied update, held on a PS.

    A plain object (not a Trackable) so Keras does not count its variable among the model's weights.
    """

    def __init__(self):
        self.hist = tf.Variable(tf.zeros([STALENESS_BINS], tf.int64), trainable=False, name="staleness_hist")

    def add(self, staleness):
        index = tf.reshape(tf.minimum(tf.maximum(staleness, 0), STALENESS_BINS - 1), [1])
        return self.hist.scatter_add(tf.IndexedSlices(tf.ones([1], tf.int64), index))  # locked on the PS

    def summary(self) -> dict:
        counts = self.hist.numpy().tolist()
        values = [s for s, c in enumerate(counts) for _ in range(c)]
        out = record.summarize(values)
        out["clipped_at"] = STALENESS_BINS - 1
        return out


class StalenessModel(tf.keras.Model):
    """cnn11's functional graph with a train_step that measures staleness for every applied update.

    staleness = optimizer.iterations read just before the update is applied − iterations read before
    the weights for the gradient were read: how many other updates landed on the PS in between.
    """

    staleness: StalenessLog | None = None

    def train_step(self, data):
        x, y = data
        read_at = self.optimizer.iterations.read_value()  # before any weight is read
        with tf.control_dependencies([read_at]):
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x, y, y_pred)
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        with tf.control_dependencies(grads):
            apply_at = self.optimizer.iterations.read_value()  # after the gradient, just before the apply
        with tf.control_dependencies([apply_at]):
            applied = self.optimizer.apply_gradients(zip(grads, variables))
        with tf.control_dependencies([applied] if applied is not None else []):
            self.staleness.add(apply_at - read_at)
        return self.compute_metrics(x, y, y_pred, None)


def staleness_model(base: tf.keras.Model, log: StalenessLog) -> StalenessModel:
    model = StalenessModel(inputs=base.inputs, outputs=base.outputs, name=base.name)
    object.__setattr__(model, "staleness", log)  # untracked: not a model weight
    return model


class IterationSampler(tf.keras.callbacks.Callback):
    """Epoch-level callback + chief thread: (wall time, optimizer.iterations) every `interval_s` during
    each epoch after warm-up; per-epoch curve, with test metrics of a local copy when `evaluate` given."""

    def __init__(self, warmup_steps: int, images_per_step: int, evaluate=None, interval_s: float = 0.1):
        super().__init__()
        self.warmup_steps, self.images_per_step, self.interval_s = warmup_steps, images_per_step, interval_s
        self.evaluate = evaluate
        self.segments: list[list[tuple[float, int]]] = []
        self.curve: list[dict] = []
        self._lock = threading.Lock()
        self._in_epoch = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t_start = time.perf_counter()
        self.first_step = 0

    def _sample(self) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        now = time.perf_counter()
        with self._lock:
            if self._in_epoch and step - self.first_step >= self.warmup_steps:
                self.segments[-1].append((now, step))

    def _run(self) -> None:
        # 0.25 s once left a short epoch of fast steps (width 0.125, 8 steps) with one sample after
        # warm-up and so no rate (CI, 2026-11-29); a read of `iterations` is one small RPC to the PS.
        while not self._stop.wait(self.interval_s):
            if self._in_epoch:
                self._sample()

    def on_train_begin(self, logs=None):
        self.t_start = time.perf_counter()
        self.first_step = int(self.model.optimizer.iterations.numpy())  # > 0 after a resume
        self._thread = threading.Thread(target=self._run, name="iteration-sampler", daemon=True)
        self._thread.start()

    def on_epoch_begin(self, epoch, logs=None):
        with self._lock:
            self.segments.append([])
            self._in_epoch = True
        self._sample()

    def on_epoch_end(self, epoch, logs=None):
        self._sample()  # all of the epoch's steps have been applied: fit joined the coordinator
        with self._lock:
            self._in_epoch = False
        point = measure.curve_point(self.model, epoch, self.t_start, self.images_per_step, logs)
        if self.evaluate is not None:
            point.update(self.evaluate(self.model))
        self.curve.append(point)

    def on_train_end(self, logs=None):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def result(self) -> dict:
        return record.throughput(self.segments, self.images_per_step)


def local_evaluator(make_model, eval_ds):
    """evaluate(model) -> {val_loss, val_top1, val_top5}: the PS weights copied into a local model.

    Called from an epoch-end callback, i.e. inside the strategy's scope, where Keras' evaluate() would
    send the work to the cluster: so a plain eager loop on the chief, metrics in numpy."""
    local = make_model()

    def evaluate(model) -> dict:
        local.set_weights(merged_weights(model))
        n = loss = top1 = top5 = 0.0
        for x, y in eval_ds:
            logits = local(x, training=False)
            loss += float(tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)))
            ranked = np.argsort(-logits.numpy(), axis=1)
            labels = y.numpy()[:, None]
            top1 += float((ranked[:, :1] == labels).any(axis=1).sum())
            top5 += float((ranked[:, :5] == labels).any(axis=1).sum())
            n += len(labels)
        return {"val_loss": loss / n, "val_top1": top1 / n, "val_top5": top5 / n}

    return evaluate


def _groups(model: tf.keras.Model) -> list[tuple[str, list]]:
    """model.weights grouped into whole variables: [(name, [shard, ...]), ...] in layer order."""
    groups: list[tuple[str, list]] = []
    for w in model.weights:
        if hasattr(w, "variables") and not isinstance(w, tf.Variable):  # a ShardedVariable itself
            groups.append((w.name, list(w.variables)))
            continue
        m = re.fullmatch(r"(.*)/part_(\d+)(:\d+)?", w.name)
        base = m.group(1) if m else w.name
        if m and int(m.group(2)) > 0 and groups and groups[-1][0] == base:
            groups[-1][1].append(w)
        else:
            groups.append((base, [w]))
    return groups


def merged_weights(model: tf.keras.Model) -> list[np.ndarray]:
    """The model's weights as numpy arrays, shards concatenated back (axis 0) into whole variables."""
    return [np.concatenate([s.numpy() for s in shards], axis=0) if len(shards) > 1 else shards[0].numpy()
            for _, shards in _groups(model)]


def local_copy(model: tf.keras.Model, make_model) -> tf.keras.Model:
    """An unsharded local model holding the PS weights (for the digest and evaluation)."""
    local = make_model()
    local.set_weights(merged_weights(model))
    return local


def shard_layout(model: tf.keras.Model, num_ps: int, min_shard_bytes: int) -> dict:
    """Where every model variable lives: per PS task, the variables/shards and bytes; the split ones."""
    per_ps = {i: {"ps": i, "variables": 0, "bytes": 0} for i in range(num_ps)}
    split = []
    groups = _groups(model)
    for name, shards in groups:
        if len(shards) > 1:
            split.append({"name": name, "shards": [{"ps": _ps_index(s.device), "shape": s.shape.as_list()}
                                                   for s in shards]})
        for s in shards:
            entry = per_ps.setdefault(_ps_index(s.device), {"ps": _ps_index(s.device), "variables": 0, "bytes": 0})
            entry["variables"] += 1
            entry["bytes"] += s.shape.num_elements() * s.dtype.size
    return {"per_ps": [per_ps[k] for k in sorted(per_ps, key=str)], "split_variables": split,
            "num_model_variables": len(groups), "min_shard_bytes": min_shard_bytes}


def _ps_index(device: str):
    spec = tf.DeviceSpec.from_string(device)
    return spec.task if spec.job == "ps" else device


def workers_alive(num_workers: int) -> list[bool]:
    """Ask the runtime whether each worker task still answers (works for any cluster source)."""
    from tensorflow.python.eager import context

    alive = []
    for i in range(num_workers):
        try:
            alive.append(bool(context.context().check_alive(f"/job:worker/replica:0/task:{i}")))
        except Exception:  # noqa: BLE001 — an unreachable task raises instead of answering
            alive.append(False)
    return alive
