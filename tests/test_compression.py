"""Issue 15: gradient compression in the sync arm (train/compression.py).

Round trips on known tensors run the compressors' own code in this process with a one-rank
exchange (a collective over one rank hands back its input); the horovodrun runs move real bytes
through Horovod (Gloo) and check the record's byte counts against sizes computed here from the
model's variable shapes, and that both ranks end with identical weights.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import BIN, records, run
from train import compression as C
from train.config import ConfigError, parse_compression, parse_config


class OneRank:
    """The exchange's view of a one-rank job: an allreduce or allgather over one rank is its input."""
    size = 1

    def allreduce(self, tensors, average=True):
        return list(tensors)

    def allgather(self, tensor):
        return tensor


def _vars(*shapes):
    return [tf.Variable(tf.zeros(s)) for s in shapes]


# ----------------------------------------------------------------------------------- round trips
def test_topk_keeps_exactly_the_k_largest():
    rng = np.random.default_rng(0)
    n, k = 1000, 37
    mags = rng.permutation(np.arange(1, n + 1, dtype=np.float32)) / n  # distinct magnitudes
    x = mags * rng.choice([-1.0, 1.0], n).astype(np.float32)
    values, idx = C.topk_select(tf.constant(x), k)
    expected = set(np.argsort(np.abs(x))[-k:].tolist())
    assert len(idx.numpy()) == k and set(idx.numpy().tolist()) == expected
    np.testing.assert_array_equal(values.numpy(), x[idx.numpy()])

    # Through the DGC exchange (one step, no momentum, no warm-up): exactly those k entries go out,
    # with their values; the residual keeps everything else.
    [v] = _vars((25, 40))
    ex = C.TopK(OneRank(), [v], None, density=k / n, warmup_epochs=0, steps_per_epoch=10, momentum=0.0)
    [out] = ex([tf.reshape(tf.constant(x), (25, 40))], [v], tf.constant(0, tf.int64))
    out = out.numpy().ravel()
    assert set(np.flatnonzero(out).tolist()) == expected
    np.testing.assert_array_equal(out[sorted(expected)], x[sorted(expected)])
    np.testing.assert_array_equal(ex.residual(0).numpy().ravel() + out, x)


def test_topk_density_warmup_is_dgc_schedule():
    # 0.25, 0.0625, 0.015625 of the values, then F (0.01) from the 4th epoch on; never below one value.
    assert [C.topk_k(1000, e, 0.01, 4) for e in range(6)] == [250, 63, 16, 10, 10, 10]
    assert C.topk_k(27, 0, 0.001, 0) == 1 and C.topk_k(100, 0, 0.01, 0) == 1


@pytest.mark.parametrize("shape, rank", [((48, 30), 3), ((3, 3, 8, 16), 2)])
def test_powersgd_reconstructs_an_exactly_rank_r_matrix(shape, rank):
    rng = np.random.default_rng(1)
    n, m = C.as_matrix_shape(shape)
    mat = (rng.standard_normal((n, rank)) @ rng.standard_normal((rank, m))).astype(np.float32)
    [v] = _vars(shape)
    ex = C.PowerSGD(OneRank(), [v], None, rank)
    assert ex.compressed == [0]
    grad = tf.constant(mat.reshape(shape))
    [out] = ex([grad], [v], 0)
    np.testing.assert_allclose(out.numpy(), grad.numpy(), rtol=1e-4, atol=1e-4 * np.abs(mat).max())
    assert np.abs(ex.residual(0).numpy()).max() <= 1e-4 * np.abs(mat).max()


def test_powersgd_leaves_small_tensors_uncompressed():
    assert not C.powersgd_compressible((64,), 4)  # BN gamma/beta, biases
    assert not C.powersgd_compressible((3, 3, 3, 4), 4)  # min side 4 is not > R
    assert not C.powersgd_compressible((6, 5), 4)  # 4*(6+5) > 30: rank 4 saves nothing
    assert C.powersgd_compressible((3, 3, 16, 32), 4)


@pytest.mark.parametrize("method", ["powersgd:2", "topk:0.05:0", "sign"])
def test_error_feedback_sent_plus_residual_is_sum_of_gradients(method):
    """Over T steps: sum of what was sent + the final residual == sum of the gradients (every variable)."""
    spec = parse_compression(method)
    variables = _vars((3, 3, 4, 8), (8,), (32, 10))
    ex = C.build_exchange(spec, OneRank(), variables, None, momentum=0.0, steps_per_epoch=5)
    rng = np.random.default_rng(2)
    sent = [np.zeros(v.shape, np.float32) for v in variables]
    total = [np.zeros(v.shape, np.float32) for v in variables]
    step = tf.function(lambda gs: ex(gs, variables, tf.constant(0)))  # as Keras runs it: in a graph
    for _ in range(6):
        grads = [rng.standard_normal(v.shape).astype(np.float32) for v in variables]
        outs = step([tf.constant(g) for g in grads])
        for i, (g, o) in enumerate(zip(grads, outs)):
            total[i] += g
            sent[i] += o.numpy()
    compressed = 0
    for i in range(len(variables)):
        residual = ex.residual(i).numpy()
        compressed += bool(np.abs(residual).max() > 0)
        np.testing.assert_allclose(sent[i] + residual, total[i], atol=1e-4)
    assert compressed == 2  # both weight tensors lost something to compression and kept it; the bias did not


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("value", ["int8", "powersgd", "powersgd:0", "powersgd:x", "powersgd:2:2", "topk",
                                   "topk:0", "topk:1.5", "topk:x", "topk:nan", "topk:0.1:x", "sign:2", "fp16:1"])
def test_bad_compression_is_one_line_and_exit_2(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(["--compression", value, "--results-dir", str(tmp_path / "r")], arm="sync", prog="t")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and repr(value) in err and "compression" in err
    assert not (tmp_path / "r").exists()


def test_good_compression_values_parse():
    assert parse_compression("powersgd:4").rank == 4
    t = parse_compression("topk:0.001")
    assert (t.method, t.density, t.warmup_epochs) == ("topk", 0.001, 4)
    assert parse_compression("topk:0.01:0").warmup_epochs == 0
    assert parse_compression("sign").method == "sign"
    with pytest.raises(ConfigError):
        parse_compression("")


@pytest.mark.parametrize("value", ["fp16", "powersgd:4", "topk:0.01", "sign"])
def test_async_arm_refuses_compression_saying_ps_has_no_hook(value, tmp_path, capsys):
    from train import async_ps

    code = async_ps.main(["--compression", value, "--results-dir", str(tmp_path / "r"), "--study", "t"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "ParameterServerStrategy exposes no hook" in err and "no gradient compression" in err
    assert not (tmp_path / "r" / "t" / "runs.jsonl").exists()


# ------------------------------------------------------------------- real runs: horovodrun -np 2 (Gloo)
TINY = ["--dataset", "synthetic", "--width", "0.25", "--image-size", "32", "--per-worker-batch", "16",
        "--epochs", "2", "--steps-per-epoch", "4", "--warmup-steps", "1", "--study", "t", "--intra-op-threads", "1"]
EPOCHS, STEPS_PER_EPOCH, NP = 2, 4, 2


def _shapes() -> list[tuple[int, ...]]:
    from train.model import cnn11

    model = cnn11((32, 32, 3), 10, "gap", 0.25)
    return [tuple(v.shape.as_list()) for v in model.trainable_variables]


def expected_bytes(method: str, shapes: list[tuple[int, ...]]) -> tuple[float, float]:
    """(sent, received) per worker per step, from the variables' shapes and the method's documented layout."""
    spec = parse_compression(method)
    numel = [math.prod(s) for s in shapes]
    if spec.method in ("none", "fp16"):
        b = sum(numel) * (2 if spec.method == "fp16" else 4)
        return b, b
    if spec.method == "powersgd":  # P (n x R) and Q (m x R) per compressed weight; the rest fp32 as is
        b = 0
        for s, k in zip(shapes, numel):
            n, m = C.as_matrix_shape(s)
            b += 4 * spec.rank * (n + m) if C.powersgd_compressible(s, spec.rank) else 4 * k
        return b, b
    weights = [k for s, k in zip(shapes, numel) if len(s) >= 2]
    small = sum(k for s, k in zip(shapes, numel) if len(s) < 2)
    if spec.method == "sign":  # int8 per weight value; fp32 small tensors + one fp32 scale per weight tensor
        b = sum(weights) + 4 * (small + len(weights))
        return b, b
    # topk: fp32 value + int32 index per kept entry, k per epoch; allgather returns every rank's
    kept = [sum(C.topk_k(k, e, spec.density, spec.warmup_epochs) for k in weights) for e in range(EPOCHS)]
    mean_kept = sum(kept) / EPOCHS  # same number of steps in every epoch
    return 8 * mean_kept + 4 * small, NP * 8 * mean_kept + 4 * small


@pytest.mark.slow
@pytest.mark.parametrize("method", ["none", "fp16", "powersgd:2", "topk:0.01:1", "sign"])
def test_two_ranks_identical_weights_and_counted_bytes(method, results):
    cmd = [str(BIN / "horovodrun"), "--gloo", "-np", str(NP), "-H", f"localhost:{NP}", sys.executable, "-m",
           "train.sync_allreduce", *TINY, "--compression", method, "--results-dir", str(results)]
    proc = run(cmd, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [rec] = records(results)
    assert rec["status"] == "ok" and rec["compression"] == method and rec["num_workers"] == NP
    assert len(rec["weights_sha256"]) == NP and len(set(rec["weights_sha256"])) == 1  # same update everywhere
    detail = rec["compression_detail"]
    assert detail["steps_counted"] == EPOCHS * STEPS_PER_EPOCH
    shapes = _shapes()
    sent, received = expected_bytes(method, shapes)
    assert rec["bytes_sent_per_step"] == pytest.approx(sent, rel=1e-12)
    assert rec["bytes_received_per_step"] == pytest.approx(received, rel=1e-12)
    full = 4 * sum(math.prod(s) for s in shapes)
    assert detail["uncompressed_bytes_per_step"] == full
    assert rec["compression_ratio"] == pytest.approx(full / sent)
    if method == "none":
        assert rec["compress_time_s_per_step"] == 0.0 and rec["compression_ratio"] == 1.0
    else:
        assert 0 < rec["compress_time_s_per_step"] < 10 and rec["compression_ratio"] > 1.9
    assert all(math.isfinite(p["loss"]) for p in rec["curve"])
