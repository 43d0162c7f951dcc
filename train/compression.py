"""Gradient compression for the sync (Horovod) arm, selected per run with --compression.

  none, fp16    Horovod's own `Compression` hook (stateless, summable) inside hvd.DistributedOptimizer,
                wrapped by CountingHook so the bytes it hands to Horovod are counted.
  powersgd:R    Vogels et al. 2019: rank-R power iteration per 2-D-reshaped gradient with error feedback;
                P of every layer in one grouped allreduce, orthogonalize, Q = M^T P in a second one;
                Q warm-starts the next step. Tensors where rank R saves nothing (BN, biases) go uncompressed
                in the first grouped allreduce.
  topk:F[:W]    Lin et al. 2018 (DGC): momentum correction and error accumulation on each worker, the
                largest fraction F of each weight gradient exchanged as values + indices by hvd.allgather,
                momentum factor masking, density warm-up 0.25, 0.0625, ... down to F over the first W epochs.
                (DGC's local gradient clipping is not done.)
  sign          signSGD with majority vote (Bernstein et al. 2019) and error feedback (Karimireddy et al.
                2019): int8 signs summed by allreduce, sign of the sum, scaled by the workers' mean |p|.

The stateful methods run through a thin optimizer wrapper (CompressedOptimizer._compute_gradients) that
calls hvd.grouped_allreduce / hvd.allgather explicitly; Horovod moves every byte. Every rank applies the
same decompressed update (it is computed from the collectives' outputs only), so weights stay identical.

Bytes are counted from the tensors handed to Horovod (size x itemsize): an allreduce's input is sent and
its output received; an allgather's input is sent and what comes back is received. That is the logical
payload per worker, not the ring's 2(p-1)/p wire factor. Compress time is measured in the graph with
tf.timestamp() around the compress and decompress phases of every step; fp16's casts (which Horovod
runs per gradient, interleaved with backprop) are timed apart from the step instead.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Sequence

import tensorflow as tf

from train.config import CompressionSpec, parse_compression

DENSITY_WARMUP_START = 0.25  # DGC: 75% sparsity in the first warm-up epoch, then x4 sparser per epoch


# ------------------------------------------------------------------------------------------ the meter
class WireMeter(tf.keras.callbacks.Callback):
    """Counts bytes handed to / returned by Horovod and the compress time, in tf.Variables, per run."""

    def __init__(self, spec: CompressionSpec, variables: Sequence[tf.Variable]):
        super().__init__()
        self.spec = spec
        # What `none` hands to Horovod per step: every gradient, fp32. The ratio's denominator.
        self.uncompressed_bytes = int(sum(v.shape.num_elements() * v.dtype.size for v in variables))
        self.sent = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.received = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.compress_s = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.exchange_s = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.layout: dict = {}
        self.steps = 0
        self.variables = list(variables)
        self.hook: CountingHook | None = None  # fp16: its casts are timed apart, at the end
        self.compress_apart_s: float | None = None

    def count(self, sent: Sequence[tf.Tensor], received: Sequence[tf.Tensor]) -> tf.Operation:
        def nbytes(ts):
            return tf.add_n([tf.size(t, out_type=tf.int64) * t.dtype.size for t in ts]) if ts else tf.constant(0, tf.int64)
        return tf.group(self.sent.assign_add(nbytes(sent)), self.received.assign_add(nbytes(received)))

    def add_time(self, compress: tf.Tensor, exchange: tf.Tensor | None = None) -> tf.Operation:
        ops = [self.compress_s.assign_add(compress)]
        if exchange is not None:
            ops.append(self.exchange_s.assign_add(exchange))
        return tf.group(*ops)

    def on_train_begin(self, logs=None):
        self._first = int(self.model.optimizer.iterations.numpy())

    def on_train_end(self, logs=None):
        self.steps += int(self.model.optimizer.iterations.numpy()) - self._first
        if self.spec.method == "fp16" and self.hook is not None:
            self.compress_apart_s = self.hook.time_apart(self.variables)

    def record_fields(self) -> dict:
        """The record's compression fields (per step = totals over this process's steps)."""
        steps = max(self.steps, 1)
        sent = int(self.sent.numpy()) / steps
        exchange_timed = self.spec.method not in ("none", "fp16")  # the hook path has no phase barrier
        return {
            "bytes_sent_per_step": sent,
            "bytes_received_per_step": int(self.received.numpy()) / steps,
            # vs `none` (every gradient in fp32); None when nothing reached Horovod (one worker, hook path)
            "compression_ratio": self.uncompressed_bytes / sent if sent else None,
            "compress_time_s_per_step": (self.compress_apart_s if self.compress_apart_s is not None
                                         else float(self.compress_s.numpy()) / steps),
            "compression_detail": {
                "method": self.spec.method, "rank": self.spec.rank or None,
                "density": self.spec.density if self.spec.method == "topk" else None,
                "density_warmup_epochs": self.spec.warmup_epochs if self.spec.method == "topk" else None,
                "uncompressed_bytes_per_step": self.uncompressed_bytes, "steps_counted": self.steps,
                # Wall time inside the collectives, including waiting for the slower rank to reach them.
                "exchange_time_s_per_step": float(self.exchange_s.numpy()) / steps if exchange_timed else None,
                "compress_time_how": {
                    "none": "no compression op (0)",
                    "fp16": "Horovod's fp16 casts of every gradient-shaped tensor and back, timed apart from "
                            "the step after training (median of 5)",
                }.get(self.spec.method, "tf.timestamp() around the compress and decompress phases of every step"),
                "bytes_counted": "size x itemsize of every tensor handed to Horovod (allreduce in = sent, "
                                 "out = received; allgather in = sent, out = received)",
                **self.layout,
            },
        }


# ------------------------------------------------------------------------------------- timing helpers
def _stamp(after: Sequence[tf.Tensor]) -> tf.Tensor:
    """Wall clock (s) once every tensor in `after` exists."""
    with tf.control_dependencies([t for t in after if t is not None]):
        return tf.timestamp()


def _gate(tensors: Sequence[tf.Tensor], t: tf.Tensor) -> list[tf.Tensor]:
    """The same tensors, usable only after timestamp `t` was taken (so a phase starts after its stamp)."""
    with tf.control_dependencies([t]):
        return [tf.identity(x) for x in tensors]


def _after(op: tf.Operation, tensors: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    with tf.control_dependencies([op]):
        return [tf.identity(x) for x in tensors]


# ----------------------------------------------------------------------------- the hook path (none/fp16)
class CountingHook:
    """A Horovod Compressor (compress/decompress) wrapping Horovod's none or fp16 one; it counts the
    compressed tensor Horovod is handed and what it returns.

    Its casts are not timed inside the step: Horovod calls it per gradient while backprop still runs,
    so a stamp pair around one cast measures mostly queueing behind backprop (0.2 s/step measured for
    casts worth milliseconds). time_apart() times the same casts on their own instead."""

    def __init__(self, inner, meter: WireMeter):
        self.inner, self.meter = inner, meter

    def compress(self, tensor):
        compressed, ctx = self.inner.compress(tensor)
        return _after(self.meter.count([compressed], []), [compressed])[0], ctx

    def decompress(self, tensor, ctx):
        return self.inner.decompress(_after(self.meter.count([], [tensor]), [tensor])[0], ctx)

    def time_apart(self, variables: Sequence[tf.Variable], reps: int = 5) -> float:
        """Median wall time (s) of compress + decompress of tensors shaped like every gradient."""
        tensors = [tf.identity(v) for v in variables]
        fn = tf.function(lambda ts: [self.inner.decompress(*self.inner.compress(t)) for t in ts])
        fn(tensors)  # trace
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            [t.numpy() for t in fn(tensors)]
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


# ------------------------------------------------------------------------------ collectives, counted
class HorovodComm:
    """The only place the stateful methods hand tensors to Horovod; every byte is counted here."""

    def __init__(self, meter: WireMeter):
        import horovod.tensorflow as hvd  # Horovod:
        self.hvd, self.meter = hvd, meter
        self.size = hvd.size()

    def allreduce(self, tensors: list[tf.Tensor], average: bool = True) -> list[tf.Tensor]:
        out = self.hvd.grouped_allreduce(tensors, op=self.hvd.Average if average else self.hvd.Sum)
        return _after(self.meter.count(tensors, out), out)

    def allgather(self, tensor: tf.Tensor) -> tf.Tensor:
        out = self.hvd.allgather(tensor)
        return _after(self.meter.count([tensor], [out]), [out])[0]


# ------------------------------------------------------------------ pure math (unit-tested, no Horovod)
def as_matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """2-D view of a weight: conv kernel (kh, kw, cin, cout) -> (kh*kw*cin, cout); dense stays."""
    shape = list(shape)
    return (math.prod(shape[:-1]) if len(shape) > 1 else 1), (shape[-1] if shape else 1)


def powersgd_compressible(shape: Sequence[int], rank: int) -> bool:
    """Rank R pays only on a matrix with both sides > R and R(n+m) < n*m values (not BN, not biases)."""
    if len(shape) < 2:
        return False
    n, m = as_matrix_shape(shape)
    return min(n, m) > rank and rank * (n + m) < n * m


def orthogonalize(p: tf.Tensor) -> tf.Tensor:
    """Orthonormal columns spanning p's (PowerSGD's Gram-Schmidt; QR is the stable equivalent)."""
    return tf.linalg.qr(p, full_matrices=False).q


def topk_select(flat: tf.Tensor, k) -> tuple[tf.Tensor, tf.Tensor]:
    """(values, int32 indices) of the k entries of largest magnitude of a 1-D tensor."""
    _, idx = tf.math.top_k(tf.abs(flat), k=k, sorted=False)
    return tf.gather(flat, idx), idx


def topk_density(epoch: int, density: float, warmup_epochs: int) -> float:
    """DGC's density warm-up: 0.25, 0.0625, ... (x1/4 per epoch) during the warm-up epochs, never below F."""
    if epoch < warmup_epochs:
        return max(density, DENSITY_WARMUP_START ** (epoch + 1))
    return density


def topk_k(numel: int, epoch: int, density: float, warmup_epochs: int) -> int:
    """Values kept of a tensor of `numel` entries in `epoch` (>= 1), computed in float64 once, in Python."""
    return max(1, min(numel, math.ceil(numel * topk_density(epoch, density, warmup_epochs) - 1e-9)))


# ------------------------------------------------------------------------------- stateful exchanges
class Exchange:
    """Compress, exchange through `comm`, decompress: grads in, the averaged update every rank applies out."""

    owns_momentum = False  # DGC applies momentum before compressing: the optimizer must not add its own

    def __init__(self, comm, variables: Sequence[tf.Variable], meter: WireMeter | None):
        self.comm, self.meter = comm, meter
        self.index = {v.ref(): i for i, v in enumerate(variables)}
        self.shapes = [tuple(v.shape.as_list()) for v in variables]

    def _order(self, grads, variables) -> list[tf.Tensor]:
        ordered = [None] * len(self.shapes)
        for g, v in zip(grads, variables):
            ordered[self.index[v.ref()]] = tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
        return ordered

    def __call__(self, grads: Sequence[tf.Tensor], variables: Sequence[tf.Variable], step) -> list[tf.Tensor]:
        ordered = self._order(grads, variables)
        out, done = self.exchange(ordered, step)
        out = _after(done, out)
        return [out[self.index[v.ref()]] for v in variables]

    def _timed(self, compress: tf.Tensor, exchange: tf.Tensor) -> tf.Operation:
        return self.meter.add_time(compress, exchange) if self.meter is not None else tf.no_op()

    def exchange(self, grads: list[tf.Tensor], step) -> tuple[list[tf.Tensor], tf.Operation]:
        raise NotImplementedError

    err: dict = {}  # variable index -> its error-feedback residual (a tf.Variable), for compressed variables

    def residual(self, i: int) -> tf.Tensor:
        """What variable i's gradients have not yet sent (error feedback), for tests."""
        return self.err[i] if i in self.err else tf.zeros(self.shapes[i])

    def _layout(self, meter: WireMeter | None, **extra) -> None:
        """Which variables are compressed, for the record."""
        if meter is not None:
            meter.layout = {"compressed_variables": len(self.compressed), "uncompressed_variables": len(self.dense),
                            **extra}


class PowerSGD(Exchange):
    def __init__(self, comm, variables, meter, rank: int, seed: int = 1234):
        super().__init__(comm, variables, meter)
        self.rank = rank
        self.compressed = [i for i, s in enumerate(self.shapes) if powersgd_compressible(s, rank)]
        self.dense = [i for i, s in enumerate(self.shapes) if i not in self.compressed]
        self.err, self.q = {}, {}
        for i in self.compressed:
            n, m = as_matrix_shape(self.shapes[i])
            self.err[i] = tf.Variable(tf.zeros(self.shapes[i]), trainable=False)
            # The same Q on every rank (stateless seed); afterwards Q is the allreduced one (warm start).
            self.q[i] = tf.Variable(tf.random.stateless_normal((m, rank), seed=(seed, i)), trainable=False)
        self._layout(meter)

    def exchange(self, grads, step):
        t0 = _stamp(grads)
        grads = _gate(grads, t0)
        ms = {i: tf.reshape(grads[i] + self.err[i], as_matrix_shape(self.shapes[i])) for i in self.compressed}
        ps = [tf.matmul(ms[i], self.q[i]) for i in self.compressed]
        small = [grads[i] for i in self.dense]
        t1 = _stamp(ps + small)
        first = self.comm.allreduce(_gate(ps + small, t1))  # P of every layer + the small tensors, averaged
        t2 = _stamp(first)
        p_hat = {i: orthogonalize(p) for i, p in zip(self.compressed, first[:len(ps)])}
        qs = [tf.matmul(ms[i], p_hat[i], transpose_a=True) for i in self.compressed]
        t3 = _stamp(qs)
        second = self.comm.allreduce(_gate(qs, t3)) if qs else []  # Q = M^T P, averaged
        t4 = _stamp(second)
        out = [None] * len(self.shapes)
        for i, g in zip(self.dense, first[len(ps):]):
            out[i] = g
        updates = []
        for i, q in zip(self.compressed, second):
            approx = tf.matmul(p_hat[i], q, transpose_b=True)
            out[i] = tf.reshape(approx, self.shapes[i])
            updates += [self.err[i].assign(tf.reshape(ms[i] - approx, self.shapes[i])), self.q[i].assign(q)]
        t5 = _stamp(out + updates)
        return out, tf.group(*updates, self._timed((t1 - t0) + (t3 - t2) + (t5 - t4), (t2 - t1) + (t4 - t3)))


class TopK(Exchange):
    owns_momentum = True

    def __init__(self, comm, variables, meter, density: float, warmup_epochs: int, steps_per_epoch: int,
                 momentum: float):
        super().__init__(comm, variables, meter)
        self.momentum, self.steps_per_epoch, self.warmup_epochs = momentum, max(1, steps_per_epoch), warmup_epochs
        self.compressed = [i for i, s in enumerate(self.shapes) if len(s) >= 2]  # weights; BN/biases dense
        self.dense = [i for i, s in enumerate(self.shapes) if len(s) < 2]
        self.u = {i: tf.Variable(tf.zeros(s), trainable=False) for i, s in enumerate(self.shapes)}  # momentum
        self.v = {i: tf.Variable(tf.zeros(self.shapes[i]), trainable=False) for i in self.compressed}  # accum.
        numel = {i: math.prod(self.shapes[i]) for i in self.compressed}
        self.offset, total = {}, 0
        for i in self.compressed:
            self.offset[i], total = total, total + numel[i]
        self.total = total
        # k per variable for epochs 0..W (the last entry holds from epoch W on): integers fixed here.
        self.k_table = {i: tf.constant([topk_k(numel[i], e, density, warmup_epochs)
                                        for e in range(warmup_epochs + 1)], tf.int32) for i in self.compressed}
        self.err = self.v  # the accumulated gradient not yet sent is DGC's residual
        self._layout(meter, values_per_step_by_epoch=[sum(topk_k(numel[i], e, density, warmup_epochs)
                                                          for i in self.compressed)
                                                      for e in range(warmup_epochs + 1)])

    def exchange(self, grads, step):
        epoch = tf.minimum(tf.cast(step, tf.int32) // self.steps_per_epoch, self.warmup_epochs)
        t0 = _stamp(grads)
        grads = _gate(grads, t0)
        u_new = {i: self.momentum * self.u[i] + grads[i] for i in range(len(self.shapes))}  # momentum correction
        values, indices, updates = [], [], []
        for i in self.compressed:
            acc = tf.reshape(self.v[i] + u_new[i], [-1])  # error accumulation
            val, idx = topk_select(acc, tf.gather(self.k_table[i], epoch))
            values.append(val)
            indices.append(idx + self.offset[i])
            keep = tf.tensor_scatter_nd_update(tf.ones_like(acc), idx[:, None], tf.zeros_like(val))
            updates.append(self.v[i].assign(tf.reshape(acc * keep, self.shapes[i])))
            # Momentum factor masking: what was sent stops accumulating momentum.
            updates.append(self.u[i].assign(tf.reshape(tf.reshape(u_new[i], [-1]) * keep, self.shapes[i])))
        for i in self.dense:
            updates.append(self.u[i].assign(u_new[i]))
        small = [u_new[i] for i in self.dense]
        sparse_vals = tf.concat(values, 0) if values else tf.zeros([0])
        sparse_idx = tf.concat(indices, 0) if indices else tf.zeros([0], tf.int32)
        t1 = _stamp([sparse_vals, sparse_idx] + small)
        gated = _gate([sparse_vals, sparse_idx] + small, t1)
        dense_avg = self.comm.allreduce(gated[2:]) if small else []
        all_vals = self.comm.allgather(gated[0]) if values else None
        all_idx = self.comm.allgather(gated[1]) if values else None
        t2 = _stamp(dense_avg + [x for x in (all_vals, all_idx) if x is not None])
        out = [None] * len(self.shapes)
        for i, g in zip(self.dense, dense_avg):
            out[i] = g
        if values:
            # Every rank sent the same number of values: rows of the gathered tensors are ranks. Summing rank
            # by rank (indices unique within a rank) keeps the sum's order, hence the result, identical everywhere.
            vals = tf.reshape(all_vals, [self.comm.size, -1])
            idx = tf.reshape(all_idx, [self.comm.size, -1])
            summed = tf.zeros([self.total])
            for r in range(self.comm.size):
                summed = tf.tensor_scatter_nd_add(summed, idx[r][:, None], vals[r])
            summed = summed / self.comm.size
            for i in self.compressed:
                n = math.prod(self.shapes[i])
                out[i] = tf.reshape(summed[self.offset[i]:self.offset[i] + n], self.shapes[i])
        t3 = _stamp(out + updates)
        return out, tf.group(*updates, self._timed((t1 - t0) + (t3 - t2), t2 - t1))


class Sign(Exchange):
    def __init__(self, comm, variables, meter):
        super().__init__(comm, variables, meter)
        self.compressed = [i for i, s in enumerate(self.shapes) if len(s) >= 2]
        self.dense = [i for i, s in enumerate(self.shapes) if len(s) < 2]
        self.err = {i: tf.Variable(tf.zeros(self.shapes[i]), trainable=False) for i in self.compressed}
        self._layout(meter)

    def exchange(self, grads, step):
        t0 = _stamp(grads)
        grads = _gate(grads, t0)
        p = {i: grads[i] + self.err[i] for i in self.compressed}
        scale = {i: tf.reduce_mean(tf.abs(p[i])) for i in self.compressed}
        signs = [tf.cast(tf.sign(p[i]), tf.int8) for i in self.compressed]
        updates = [self.err[i].assign(p[i] - scale[i] * tf.sign(p[i])) for i in self.compressed]  # error feedback
        floats = [grads[i] for i in self.dense] + ([tf.stack([scale[i] for i in self.compressed])] if signs else [])
        t1 = _stamp(signs + floats)
        gated = _gate(signs + floats, t1)
        votes = self.comm.allreduce(gated[:len(signs)], average=False) if signs else []  # int8 sum
        float_avg = self.comm.allreduce(gated[len(signs):])  # small tensors + every layer's scale, averaged
        t2 = _stamp(votes + float_avg)
        out = [None] * len(self.shapes)
        for i, g in zip(self.dense, float_avg):
            out[i] = g
        if signs:
            mean_scale = float_avg[-1]
            for j, (i, vote) in enumerate(zip(self.compressed, votes)):
                out[i] = mean_scale[j] * tf.sign(tf.cast(vote, tf.float32))  # majority vote
        t3 = _stamp(out + updates)
        return out, tf.group(*updates, self._timed((t1 - t0) + (t3 - t2), t2 - t1))


def build_exchange(spec: CompressionSpec, comm, variables: Sequence[tf.Variable], meter: WireMeter | None,
                   momentum: float = 0.0, steps_per_epoch: int = 1) -> Exchange:
    if spec.method == "powersgd":
        return PowerSGD(comm, variables, meter, spec.rank)
    if spec.method == "topk":
        return TopK(comm, variables, meter, spec.density, spec.warmup_epochs, steps_per_epoch, momentum)
    if spec.method == "sign":
        return Sign(comm, variables, meter)
    raise ValueError(f"{spec.method} is not a stateful exchange (it rides Horovod's Compression hook)")


def _compressed_optimizer(base: type, config: dict, exchange: Exchange):
    """A subclass of the optimizer's own class whose gradients go through `exchange` (as Horovod's
    DistributedOptimizer overrides _compute_gradients); same class name, so checkpoints still match."""

    class CompressedOptimizer(base):
        def _compute_gradients(self, loss, var_list, grad_loss=None, tape=None):
            grads_and_vars = super()._compute_gradients(loss, var_list, grad_loss=grad_loss, tape=tape)
            variables = [v for _, v in grads_and_vars]
            exchanged = exchange([g for g, _ in grads_and_vars], variables, self.iterations)
            return list(zip(exchanged, variables))

    CompressedOptimizer.__name__ = CompressedOptimizer.__qualname__ = base.__name__
    return CompressedOptimizer.from_config(config)


def distributed_optimizer(optimizer, compression: str, variables: Sequence[tf.Variable],
                          steps_per_epoch: int) -> tuple[tf.keras.optimizers.legacy.Optimizer, WireMeter]:
    """Horovod: the sync arm's optimizer for --compression, and the meter (a Keras callback) whose
    record_fields() go into the record. `variables`: the model's trainable variables."""
    import horovod.tensorflow as hvd_tf  # Horovod:
    import horovod.tensorflow.keras as hvd  # Horovod:

    spec = parse_compression(compression)
    meter = WireMeter(spec, variables)
    if spec.method in ("none", "fp16"):  # stateless and summable: Horovod's hook fits
        inner = hvd_tf.Compression.fp16 if spec.method == "fp16" else hvd_tf.Compression.none
        meter.hook = hook = CountingHook(inner, meter)
        return hvd.DistributedOptimizer(optimizer, compression=hook), meter
    config = optimizer.get_config()
    momentum = float(config.get("momentum", 0.0))
    exchange = build_exchange(spec, HorovodComm(meter), variables, meter, momentum, steps_per_epoch)
    if exchange.owns_momentum:
        config["momentum"] = 0.0  # DGC: momentum is applied before compression, on each worker
    return _compressed_optimizer(type(optimizer), config, exchange), meter
