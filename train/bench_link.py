"""Horovod allreduce microbenchmark of one link, in the trainer's own message pattern (np = 2, under srun).

    srun --mpi=pmix -N2 -n2 python -m train.bench_link --out allreduce.json --model fc4096,32,0.25,10

Why not single tensors of growing size: between two tc-shaped netns nodes the time of one allreduce is not
linear in its size (TCP over a token-bucket queue: a transfer's rate depends on how long it runs and on the
ACKs queued behind the other direction's data), so alpha and B fitted to single tensors do not describe the
exchange of a training step. Here every point is the allreduce of the model's own gradient tensors, issued
together in one tf.function as hvd.DistributedOptimizer issues them (Horovod fuses them the same way), with
every tensor scaled by a factor f (f = 1: the real gradients, n bytes). alpha and B are fitted to
t(f) = 2(p-1) alpha + 2(p-1)/p * f n / B over the factors (compare.scaling.fit_alpha_beta). No training,
no compute: only the exchange. Single-tensor times are measured too, for the record.
A TensorFlow program: compare/ only launches it (under srun), never imports it.
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
    ap = argparse.ArgumentParser(prog="train.bench_link")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", required=True, help="HEAD,IMAGE_SIZE,WIDTH,CLASSES of cnn11")
    ap.add_argument("--factors", default="0.0625,0.25,0.5,1")
    ap.add_argument("--singles", default="1048576,16777216", help="single-tensor sizes (bytes), informational")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    import horovod.tensorflow as hvd

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from train.model import cnn11

    head, size, width, classes = args.model.split(",")
    counts = [int(w.shape.num_elements()) for w in
              cnn11((int(size), int(size), 3), int(classes), head, float(width)).trainable_weights]
    hvd.init()

    def timed(fn) -> dict:
        fn()  # warm-up (also builds the function)
        times = []
        for _ in range(args.reps):
            hvd.allreduce(tf.zeros([1]), name="barrier").numpy()  # line the ranks up
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        return {"median_s": max(hvd.allgather_object(med)), "per_rank_median_s": hvd.allgather_object(med),
                "min_s": min(times), "times_s": times}

    pattern = []
    for f in sorted(float(v) for v in args.factors.split(",") if v):
        tensors = [tf.ones([max(1, int(round(c * f)))]) for c in counts]

        @tf.function
        def exchange(ts=tensors, tag=f"f{f}"):
            return [hvd.allreduce(t, op=hvd.Average, name=f"{tag}_g{i}") for i, t in enumerate(ts)]

        r = timed(lambda: [t.numpy() for t in exchange()])
        pattern.append({"factor": f, "tensors": len(tensors), "bytes": 4 * sum(int(t.shape[0]) for t in tensors), **r})
    singles = []
    for n in sorted(int(v) for v in args.singles.split(",") if v):
        x = tf.ones([max(1, n // 4)])
        singles.append({"bytes": 4 * max(1, n // 4),
                        **timed(lambda x=x, n=n: hvd.allreduce(x, op=hvd.Sum, name=f"s{n}").numpy())})
    hosts = hvd.allgather_object(socket.gethostname())
    if hvd.rank() == 0:
        from compare.scaling import fit_alpha_beta
        alpha, bw = fit_alpha_beta([p["bytes"] for p in pattern], [p["median_s"] for p in pattern], hvd.size())
        out = {"np": hvd.size(), "controller": "mpi" if hvd.mpi_enabled() else "gloo", "alpha_s": alpha, "bw_Bps": bw,
               "grad_bytes": 4 * sum(counts), "tensors": len(counts), "pattern": pattern, "singles": singles,
               "reps": args.reps, "hosts": hosts,
               "link": os.environ.get("LOCALCLUSTER_LINK"),
               "fit": "t(f) = 2(p-1) alpha + 2(p-1)/p * f n / B over the scaled gradient sets, relative residuals",
               "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                            "horovod": __import__("horovod").__version__},
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
        os.replace(args.out + ".tmp", args.out)
        print(f"link {out['link']}: alpha {alpha * 1e3:.2f} ms, B {bw / 1e6:.0f} MB/s; exchange of n = "
              f"{out['grad_bytes'] / 1e6:.1f} MB: {pattern[-1]['median_s'] * 1e3:.0f} ms -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
