"""Horovod allreduce microbenchmark: median time of an fp32 allreduce per message size.

Run under the launcher, one process per rank (the sweep does this once per study):
    horovodrun --gloo -np 2 -H localhost:2 python -m train.bench_allreduce --out results/local/allreduce.json

A TensorFlow program (Horovod has no framework-free allreduce), so it lives in train/ and the study
pipeline (compare/, no TensorFlow) only launches it as its own process. Rank 0 writes a JSON with
the raw times and the alpha-beta fit t = 2(p-1) alpha + 2(p-1)/p * n / B (compare.scaling).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="train.bench_allreduce")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", default="4096,65536,262144,1048576,4194304,16777216",
                    help="message sizes in bytes, comma-separated")
    ap.add_argument("--grad-bytes", type=int, default=0, help="the model's gradient bytes (added to sizes)")
    ap.add_argument("--model", default="", help="HEAD,IMAGE_SIZE,WIDTH,CLASSES: add cnn11's gradient bytes to sizes")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--intra-op-threads", type=int, default=1)
    args = ap.parse_args(argv)

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    import horovod.tensorflow as hvd

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from train import measure
    shapes = []
    grad = args.grad_bytes
    if args.model:
        from train.model import cnn11, gradient_bytes
        head, size, width, classes = args.model.split(",")
        grad = gradient_bytes(int(size), int(classes), head, float(width))
        shapes = [tuple(w.shape) for w in cnn11((int(size), int(size), 3), int(classes), head,
                                                    float(width)).trainable_weights]

    # A training step's CPU work, emulated: a chain of 256x256 matmuls, timed before Horovod
    # starts (both ranks compute side by side, no background thread) ...
    w = tf.random.uniform((256, 256)) / 256.0

    @tf.function
    def chunk(x, reps):
        for _ in tf.range(reps):
            x = tf.linalg.matmul(x, w) + 0.5
        return x

    x0 = tf.random.uniform((256, 256))
    chunk(x0, tf.constant(3)).numpy()
    t0 = time.perf_counter()
    chunk(x0, tf.constant(200)).numpy()
    per_rep = (time.perf_counter() - t0) / 200
    n_grads = max(1, len(shapes))
    # two step lengths (60 and 180 ms): a forward third, then the backward two thirds in one piece per
    # gradient tensor, each tensor's allreduce issued when its piece ends (backward order, as the
    # DistributedOptimizer issues them while backward still runs)
    pieces = [(max(1, round(ms / 3e3 / per_rep)), max(1, round(ms * 2 / 3e3 / per_rep / n_grads))) for ms in (60, 180)]
    totals = [fwd + n_grads * bwd for fwd, bwd in pieces]

    def timed(fn, reps=7):
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    pre = [timed(lambda r=r: chunk(x0, tf.constant(r)).numpy()) for r in totals]

    settings = measure.horovod_defaults()  # Horovod: the trainer's settings (cycle time on CPU ranks)
    hvd.init()
    # ... and again with Horovod running, interleaved with the allreduce of the model's own gradient tensors
    grads = [tf.ones(s) for s in shapes[::-1]] or [tf.ones([max(1, grad // 4)])]

    @tf.function
    def step(x, fwd, bwd):
        y, red = chunk(x, fwd), []
        for i, g in enumerate(grads):
            y = chunk(y, bwd)
            with tf.control_dependencies([y]):
                red.append(hvd.allreduce(g + 0.0, op=hvd.Average, name=f"grad{i}"))
        return y, red  # both fetched: inside a tf.function an unfetched op is not waited on

    def run_step(fwd, bwd):
        y, red = step(x0, tf.constant(fwd), tf.constant(bwd))
        y.numpy(), [t.numpy() for t in red]

    run_step(1, 1)
    post = [timed(lambda r=r: chunk(x0, tf.constant(r)).numpy()) for r in totals]
    hvd.allreduce(tf.zeros([1]), name="barrier0").numpy()
    with_ar = [timed(lambda fb=fb: run_step(*fb)) for fb in pieces]
    # b = a0 (1 + g) + delta over the two step lengths: g, the proportional CPU tax of running
    # Horovod beside the compute on the same core; delta, the per-step exchange the compute does not hide.
    pre_all = [max(v) for v in zip(*hvd.allgather_object(pre))]
    post_all = [max(v) for v in zip(*hvd.allgather_object(post))]
    ar_all = [max(v) for v in zip(*hvd.allgather_object(with_ar))]
    g = (ar_all[1] - ar_all[0]) / (pre_all[1] - pre_all[0]) - 1.0
    delta = ar_all[0] - pre_all[0] * (1.0 + g)
    emulation = {"chunk_s_before_init": pre_all, "chunk_s_after_init": post_all,
                 "chunk_plus_allreduce_s": ar_all, "tensors": len(grads), "tax": g, "delta_s": delta,
                 "horovod_settings": settings,
                 "how": "a third of the step as forward, then one piece of backward per gradient tensor, its "
                        "allreduce issued as the piece ends (backward order, the model's own shapes)",
                 "fit": "chunk+allreduce = chunk_before_init * (1 + tax) + delta, two step lengths, max over ranks"}

    sizes = sorted({int(s) for s in args.sizes.split(",") if s} | ({grad} if grad else set()))
    # The per-worker matmul peak, measured once here the way train/measure.py does (best of 5
    # fp32 2048x2048 matmuls, same threads), so the trainers need not measure it every run.
    a = tf.random.uniform((2048, 2048))
    b = tf.random.uniform((2048, 2048))
    tf.linalg.matmul(a, b).numpy()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    peak = min(hvd.allgather_object(2 * 2048 ** 3 / best / 1e9))  # collective: every rank calls it
    results = []
    for n in sizes:
        x = tf.ones([max(1, n // 4)], tf.float32)
        for _ in range(3):
            hvd.allreduce(x, op=hvd.Sum, name=f"warm{n}").numpy()
        times = []
        for i in range(args.reps):
            hvd.allreduce(tf.zeros([1]), name="barrier").numpy()  # line the ranks up
            t0 = time.perf_counter()
            hvd.allreduce(x, op=hvd.Sum, name=f"ar{n}").numpy()
            times.append(time.perf_counter() - t0)
        # The slowest rank decides: max over ranks of each rank's median.
        med = statistics.median(times)
        med_all = hvd.allgather_object(med)
        results.append({"bytes": 4 * max(1, n // 4), "median_s": max(med_all), "per_rank_median_s": med_all,
                        "min_s": min(times)})
    if hvd.rank() == 0:
        from compare.scaling import fit_alpha_beta
        alpha, bw = fit_alpha_beta([r["bytes"] for r in results], [r["median_s"] for r in results], hvd.size())
        out = {"np": hvd.size(), "controller": "mpi" if hvd.mpi_enabled() else "gloo",
               "alpha_s": alpha, "bw_Bps": bw, "grad_bytes": grad or None,
               "peak_gflops_per_worker": peak, "step_emulation": emulation,
               "peak_source": f"best of 5 fp32 2048x2048 matmuls, {args.intra_op_threads} intra-op thread(s), min over ranks",
               "sizes": results, "reps": args.reps, "host": socket.gethostname(),
               "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                            "horovod": __import__("horovod").__version__},
               "fit": "t = 2(p-1) alpha + 2(p-1)/p * n / B, least squares on relative residuals",
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = args.out + ".tmp"
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, args.out)
        print(f"allreduce np={hvd.size()}: alpha {alpha * 1e6:.1f} us, B {bw / 1e9:.2f} GB/s; in a step: "
              f"tax {g:+.3f}, delta {delta * 1e3:.1f} ms -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
