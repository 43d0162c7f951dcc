import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT
from train.model import (HEADS, cnn11, dense_counts, gradient_bytes, layer_counts, train_flops_per_image,
                         trainable_params)


def _trainable(model: tf.keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def test_parameter_counts_match_the_checked_numbers():
    gap = cnn11((224, 224, 3), 1000, "gap")
    assert _trainable(gap) == trainable_params(224, 1000, "gap") == 10_511_272
    assert gap.count_params() == 10_517_672  # with BN moving statistics
    fc = cnn11((224, 224, 3), 1000, "fc4096")
    assert _trainable(fc) == trainable_params(224, 1000, "fc4096") == 133_641_128
    assert cnn11((32, 32, 3), 10).count_params() == 10_009_802


def test_training_flops_per_image():
    assert train_flops_per_image(224, 1000, "gap") == pytest.approx(78.2102e9, rel=1e-5)
    assert train_flops_per_image(224, 1000, "fc4096") == pytest.approx(78.9489e9, rel=1e-5)
    convs_only = train_flops_per_image(32, 10) - 6 * 512 * 10
    assert convs_only == pytest.approx(1.596e9, rel=1e-3)


def test_structure_eleven_convs_no_bias_bn_relu():
    model = cnn11((32, 32, 3), 10)
    convs = [l for l in model.layers if isinstance(l, tf.keras.layers.Conv2D)]
    assert len(convs) == 11
    assert [c.filters for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512]
    assert all(not c.use_bias and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(l, tf.keras.layers.BatchNormalization) for l in model.layers) == 11
    assert sum(isinstance(l, tf.keras.layers.MaxPool2D) for l in model.layers) == 5


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("head", HEADS)
def test_output_shapes(size, head):
    model = cnn11((size, size, 3), 7, head, width=0.125)
    out = model(tf.zeros((2, size, size, 3)), training=False)
    assert out.shape == (2, 7) and out.dtype == tf.float32
    assert _trainable(model) == trainable_params(size, 7, head, 0.125)


def test_width_scales_channels_and_gradient_bytes_halve_with_fp16():
    model = cnn11((32, 32, 3), 10, width=0.25)
    assert [l.filters for l in model.layers if isinstance(l, tf.keras.layers.Conv2D)][0] == 16
    assert gradient_bytes(32, 10, "gap", 0.25, "fp16") * 2 == gradient_bytes(32, 10, "gap", 0.25, "none")
    assert gradient_bytes(32, 10) == 4 * trainable_params(32, 10)


@pytest.mark.parametrize("head", HEADS)
def test_layer_and_dense_counts_match_the_built_model(head):
    model = cnn11((64, 64, 3), 7, head, width=0.125)
    kinds = {"conv": tf.keras.layers.Conv2D, "batch_norm": tf.keras.layers.BatchNormalization,
             "max_pool": tf.keras.layers.MaxPool2D, "dense": tf.keras.layers.Dense}
    assert layer_counts(head) == {k: sum(isinstance(l, t) for l in model.layers) for k, t in kinds.items()}
    dense = [l for l in model.layers if isinstance(l, tf.keras.layers.Dense)]
    params, macs = dense_counts(64, 7, head, 0.125)
    assert params == sum(l.count_params() for l in dense)
    assert macs == sum(l.kernel.shape[0] * l.kernel.shape[1] for l in dense)


def test_counts_import_without_tensorflow():
    code = ("import sys; from train import model; model.train_flops_per_image(32, 10); model.layer_counts();"
            "model.dense_counts(32, 10, 'fc4096'); assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shape=(31, 31, 3), num_classes=10), "below 32"),
    (dict(input_shape=(32, 32, 3), num_classes=10, head="mlp"), "unknown head"),
    (dict(input_shape=(32, 32, 3), num_classes=10, width=0), "width"),
])
def test_bad_model_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cnn11(**kwargs)
