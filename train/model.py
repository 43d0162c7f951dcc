"""The shared cnn11 model: 11 conv 3x3 layers in 5 stages, two heads. Knows nothing of distribution.

Only cnn11() imports TensorFlow: the analytic counts below (parameters, FLOPs, gradient bytes, layer
counts) serve programs that must not load it (compare/).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512), (512, 512))
HEADS = ("gap", "fc4096")
MIN_IMAGE_SIZE = 32  # five 2x2 pools: 32 -> 1
# BN moving-average momentum: PyTorch's default (0.1 new), not Keras's 0.99. At 0.99 the statistics used
# for evaluation trail the weights by ~100 updates; on digits (~20 updates an epoch) held-out top-1 sat
# at 0.13-0.37 for 7 epochs while training top-1 was already 0.89-0.98 (async PS, measured 2026-11-28),
# so time to accuracy measured the average's lag, worst for the arms that make the fewest updates.
BN_MOMENTUM = 0.9


def conv_channels(width: float = 1.0) -> list[list[int]]:
    """Channels of every conv, stage by stage, after the width multiplier."""
    return [[max(1, int(round(c * width))) for c in stage] for stage in STAGES]


def _check(image_size: int, head: str, width: float) -> None:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is below {MIN_IMAGE_SIZE} (cnn11 pools 5 times by 2)")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")


def cnn11(input_shape: tuple[int, int, int], num_classes: int, head: str = "gap",
          width: float = 1.0) -> tf.keras.Model:
    """Uncompiled tf.keras cnn11: conv(no bias) -> BN -> ReLU, 2x2 max-pool after each stage; logits out."""
    import tensorflow as tf

    _check(min(input_shape[0], input_shape[1]), head, width)
    inputs = tf.keras.Input(shape=input_shape, name="image")
    x = inputs
    for s, stage in enumerate(conv_channels(width), start=1):
        for i, channels in enumerate(stage, start=1):
            x = tf.keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"conv{s}_{i}")(x)
            x = tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{s}_{i}")(x)
            x = tf.keras.layers.ReLU(name=f"relu{s}_{i}")(x)
        x = tf.keras.layers.MaxPool2D(2, name=f"pool{s}")(x)
    if head == "gap":
        x = tf.keras.layers.GlobalAveragePooling2D(name="gap")(x)
        x = tf.keras.layers.Dropout(0.5, name="drop")(x)
    else:  # fc4096: VGG-style, the communication-heavy variant
        x = tf.keras.layers.Flatten(name="flatten")(x)
        for i in (1, 2):
            x = tf.keras.layers.Dense(4096, activation="relu", name=f"fc{i}")(x)
            x = tf.keras.layers.Dropout(0.5, name=f"drop{i}")(x)
    # float32 logits even under a mixed-precision policy (numerically safe softmax/loss).
    outputs = tf.keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return tf.keras.Model(inputs, outputs, name=f"cnn11_{head}")


def _dense_shapes(image_size: int, num_classes: int, head: str, width: float) -> list[tuple[int, int]]:
    last = conv_channels(width)[-1][-1]
    if head == "gap":
        return [(last, num_classes)]
    side = image_size
    for _ in STAGES:
        side //= 2
    return [(side * side * last, 4096), (4096, 4096), (4096, num_classes)]


def dense_counts(image_size: int, num_classes: int, head: str = "gap", width: float = 1.0) -> tuple[int, int]:
    """(trainable params, multiply-accumulates per image) of the dense layers alone."""
    _check(image_size, head, width)
    shapes = _dense_shapes(image_size, num_classes, head, width)
    return sum(i * o + o for i, o in shapes), sum(i * o for i, o in shapes)


def layer_counts(head: str = "gap") -> dict[str, int]:
    """How many layers of each kind cnn11 has: conv, batch_norm, max_pool, dense."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    convs = sum(len(stage) for stage in STAGES)
    return {"conv": convs, "batch_norm": convs, "max_pool": len(STAGES), "dense": 1 if head == "gap" else 3}


def trainable_params(image_size: int, num_classes: int, head: str = "gap", width: float = 1.0,
                     in_channels: int = 3) -> int:
    """Analytic trainable parameters: conv kernels + BN gamma/beta + dense weights and biases."""
    _check(image_size, head, width)
    total, c_in = 0, in_channels
    for stage in conv_channels(width):
        for c in stage:
            total += 9 * c_in * c + 2 * c
            c_in = c
    return total + dense_counts(image_size, num_classes, head, width)[0]


def gradient_bytes(image_size: int, num_classes: int, head: str = "gap", width: float = 1.0,
                   compression: str = "none") -> int:
    """Bytes of one full gradient exchange (fp32, or fp16 when compressed)."""
    per_value = 2 if compression == "fp16" else 4
    return trainable_params(image_size, num_classes, head, width) * per_value


def train_flops_per_image(image_size: int, num_classes: int, head: str = "gap", width: float = 1.0,
                          in_channels: int = 3) -> float:
    """Training FLOPs per image = 6 x forward multiply-accumulates of convs and dense layers."""
    _check(image_size, head, width)
    macs, c_in, side = 0, in_channels, image_size
    for stage in conv_channels(width):
        for c in stage:
            macs += side * side * 9 * c_in * c
            c_in = c
        side //= 2
    return 6.0 * (macs + dense_counts(image_size, num_classes, head, width)[1])
