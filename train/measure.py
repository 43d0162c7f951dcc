"""What both trainers measure: thread set-up, the spec peak for MFU, the weights digest, the curve."""
from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np
import tensorflow as tf

from train import data, record
from train.peak import cpu_peak_gflops


def configure_threads(intra_op_threads: int) -> None:
    """Limit intra-op threads only: a PS cluster deadlocks when inter-op threads are 1."""
    if intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)


def set_precision(precision: str) -> None:
    if precision != "fp32":
        tf.keras.mixed_precision.set_global_policy(
            {"mixed_fp16": "mixed_float16", "mixed_bf16": "mixed_bfloat16"}[precision])


def set_up(cfg) -> tuple[float, str]:
    """Threads, precision and seed, before TensorFlow's runtime starts; returns the worker's spec peak."""
    configure_threads(cfg.intra_op_threads)
    set_precision(cfg.precision)
    tf.keras.utils.set_random_seed(cfg.seed)
    return peak_gflops(cfg)


def pin_gpu(local_rank: int) -> None:
    """One GPU per process, picked by its local rank, memory grown on demand (Horovod's recipe); on a
    machine without GPUs nothing happens."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[local_rank], "GPU")


# Horovod settings the sync trainer sets on CPU ranks unless the user set them (environment, or horovodrun's
# --cycle-time-ms). Why: on a CPU rank Horovod's background thread shares the rank's only core with the
# compute and wakes every cycle (Horovod's default 1 ms); at 10 ms, alternated side by side on 2 quiet cores
# (cnn11 width 0.5, batch 64), np=1 went 75.7 -> 80.4 img/s (plain Keras 80.2) and np=2 141.0 -> 155.0
# (README, Benchmarks). A negotiation can start up to one cycle late, so on GPUs, where the thread has a
# core of its own and a step is short, Horovod's default stays.
HOROVOD_CPU_DEFAULTS = {"HOROVOD_CYCLE_TIME": "10"}


def horovod_defaults() -> dict:
    """Horovod: before hvd.init(), apply HOROVOD_CPU_DEFAULTS where no GPU is visible and the user set
    nothing; returns the settings in effect and who chose each, for the record."""
    on_cpu = not tf.config.list_physical_devices("GPU")
    out = {}
    for name, value in HOROVOD_CPU_DEFAULTS.items():
        if name in os.environ:
            source = "user"
        elif on_cpu:
            os.environ[name], source = value, "trainer default on CPU"
        else:
            source = "horovod default"
        out[name.lower()] = {"value": os.environ.get(name), "source": source}
    return out


def bad_input(prog: str, error: Exception | str) -> int:
    """One line naming what is wrong with the input; exit code 2."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2


def dataset_spec(prog: str, cfg) -> data.DataSpec | None:
    """The dataset's classes and split sizes, or None after one line naming the problem (exit 2)."""
    try:
        return data.describe(cfg)
    except (ValueError, OSError) as e:
        bad_input(prog, e)
        return None


class LinearWarmup(tf.keras.optimizers.schedules.LearningRateSchedule):
    """lr * min(1, (update + 1) / warmup_updates): the gradual warm-up of Goyal et al. (2017). Stale
    asynchronous updates with momentum 0.9 at the full step can leave cnn11 at chance for epochs."""

    def __init__(self, lr: float, warmup_updates: int):
        self.lr, self.warmup_updates = float(lr), max(1, int(warmup_updates))

    def __call__(self, step):
        return self.lr * tf.minimum(1.0, (tf.cast(step, tf.float32) + 1.0) / self.warmup_updates)

    def get_config(self) -> dict:
        return {"lr": self.lr, "warmup_updates": self.warmup_updates}


def sgd(lr: float, momentum: float, warmup_updates: int = 0) -> tf.keras.optimizers.legacy.Optimizer:
    """SGD with momentum; with `warmup_updates` > 0 the step ramps up linearly over that many updates."""
    rate = LinearWarmup(lr, warmup_updates) if warmup_updates > 0 else lr
    return tf.keras.optimizers.legacy.SGD(learning_rate=rate, momentum=momentum)


def compile_model(model: tf.keras.Model, optimizer) -> None:
    """The loss and metrics both trainers train with: logits in, top-1 and top-5 out."""
    model.compile(optimizer=optimizer,
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="top1"),
                           tf.keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")])


def peak_gflops(cfg) -> tuple[float, str]:
    """(peak GFLOP/s of one worker, how it was derived): the CPU spec's upper bound for the cores its
    intra-op threads run on (no more than the cores the process may use)."""
    threads = record.effective_intra_op_threads(cfg.intra_op_threads)
    return cpu_peak_gflops(min(threads, len(record.cpu_affinity())))


def weights_digest(model: tf.keras.Model) -> str:
    """sha256 over every weight (trainable and BN statistics), in layer order."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()


def verbosity(is_writer: bool = True) -> int:
    """Keras fit verbosity: progress bar on a tty, one line per epoch otherwise, silent off the writer."""
    if not is_writer:
        return 0
    under_launcher = any(k in os.environ for k in ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK", "SLURM_PROCID"))
    return 1 if sys.stdout.isatty() and not under_launcher else 2  # mpirun hands ranks a pty


def curve_point(model: tf.keras.Model, epoch: int, t_start: float, images_per_step: int, logs) -> dict:
    """One point of the learning curve at the end of epoch `epoch` (0-based), from the global step."""
    step = int(model.optimizer.iterations.numpy())
    point = {"epoch": epoch + 1, "wall_s": time.perf_counter() - t_start, "steps": step,
             "images": step * images_per_step}
    point.update({k: float(v) for k, v in (logs or {}).items()})
    return point


class StepMeter(tf.keras.callbacks.Callback):
    """Samples (wall time, optimizer.iterations) after every batch past warm-up, and the epoch curve.

    images/sec comes from the change of the optimizer's global step, never from scheduled batches.
    """

    def __init__(self, warmup_steps: int, images_per_step: int):
        super().__init__()
        self.warmup_steps, self.images_per_step = warmup_steps, images_per_step
        self.segments: list[list[tuple[float, int]]] = []  # one per epoch
        self.curve: list[dict] = []
        self.t_start = time.perf_counter()

    def on_train_begin(self, logs=None):
        self.t_start = time.perf_counter()
        self.first_step = int(self.model.optimizer.iterations.numpy())  # > 0 after a resume

    def on_epoch_begin(self, epoch, logs=None):
        # Samples stay within an epoch: evaluation between epochs is not training time.
        self.segments.append([])

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step - self.first_step >= self.warmup_steps:
            self.segments[-1].append((time.perf_counter(), step))

    def on_epoch_end(self, epoch, logs=None):
        self.curve.append(curve_point(self.model, epoch, self.t_start, self.images_per_step, logs))

    def result(self) -> dict:
        return record.throughput(self.segments, self.images_per_step)


def run_summary(cfg, throughput: dict, curve: list[dict], num_classes: int, num_workers: int,
                global_batch: int, steps: int, peak: tuple[float, str]) -> dict:
    """Record fields both trainers share: throughput, FLOPs, MFU, the curve and final metrics."""
    from train.model import gradient_bytes, train_flops_per_image, trainable_params

    gflop = train_flops_per_image(cfg.image_size, num_classes, cfg.head, cfg.width) / 1e9
    ips = throughput["images_per_sec"]
    peak_per_worker, peak_source = peak
    achieved = ips * gflop if ips else None
    last = curve[-1] if curve else {}
    return {
        "num_workers": num_workers, "global_batch": global_batch, "num_classes": num_classes,
        "steps": steps, "epochs": cfg.epochs, "warmup_steps": cfg.warmup_steps,
        **throughput,
        "train_gflop_per_img": gflop, "achieved_gflops": achieved,
        "mfu": achieved / (peak_per_worker * num_workers) if achieved else None,
        "peak_gflops_per_worker": peak_per_worker, "peak_source": peak_source,
        "trainable_params": trainable_params(cfg.image_size, num_classes, cfg.head, cfg.width),
        "gradient_bytes": gradient_bytes(cfg.image_size, num_classes, cfg.head, cfg.width, cfg.compression),
        "curve": curve,
        "final": {k: last[k] for k in ("loss", "top1", "top5", "val_loss", "val_top1", "val_top5") if k in last},
        "finished_at": record.now_iso(),
    }


def write_record(prog: str, cfg, *, mode: str, run_id: str, started_at: str, meter, num_classes: int,
                 num_workers: int, global_batch: int, steps: int, peak: tuple[float, str],
                 fields: dict) -> int:
    """The epilogue of both trainers: the full record (the trainer's own `fields` last), appended to
    the study's runs.jsonl, and one line saying where it went. Returns the exit code, 0."""
    rec = record.base_record(cfg, mode=mode, run_id=run_id, started_at=started_at)
    rec.update(run_summary(cfg, meter.result(), meter.curve, num_classes, num_workers, global_batch, steps, peak))
    rec.update(fields)
    record.append_record(cfg.runs_path, rec)
    print(f"{prog}: record {run_id} -> {cfg.runs_path}: {rec['images_per_sec'] or 0:.1f} images/sec "
          f"on {num_workers} workers")
    return 0
