"""Input pipelines: synthetic, digits (scikit-learn, offline), imagenet2012 (TFDS builder), folder:PATH.

Every train pipeline is sharded (a disjoint part per worker), shuffled with a per-worker seed,
repeated, batched per worker and prefetched. Nothing here is distribution-aware beyond
(num_shards, shard_index), which each trainer gets from its engine, and ps_dataset_fn, the form the
parameter-server strategy asks for (a function each worker calls to build its own pipeline).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

SYNTHETIC_STEPS_PER_EPOCH = 20
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataSpec:
    num_classes: int
    train_examples: int | None  # None: endless (synthetic)
    eval_examples: int | None   # None: no held-out split


# ---------------------------------------------------------------- digits (real, offline)
def digits_arrays(image_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as image_size² RGB float32 in [0, 1]; fixed stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[..., None]
    images = tf.image.resize(images, (image_size, image_size), method="bilinear").numpy()
    images = np.repeat(images, 3, axis=-1)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.25, random_state=0,
                                                        stratify=labels)
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------- folder:PATH
def _folder_split(root: str) -> tuple[list[str], list[int], list[str]]:
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(os.path.join(root, name))):
            for n in sorted(names):
                if n.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(dirpath, n))
                    labels.append(label)
    return files, labels, classes


def folder_splits(path: str) -> dict[str, tuple[list[str], list[int], list[str]]]:
    """{'train': ..., 'eval': ...}: PATH/train and PATH/val when present, else PATH's class folders."""
    if os.path.isdir(os.path.join(path, "train")):
        out = {"train": _folder_split(os.path.join(path, "train"))}
        if os.path.isdir(os.path.join(path, "val")):
            out["eval"] = _folder_split(os.path.join(path, "val"))
        return out
    return {"train": _folder_split(path)}


# ---------------------------------------------------------------- imagenet2012 (TFDS's own builder)
def imagenet_builder(cfg):
    import tensorflow_datasets as tfds

    builder = tfds.builder("imagenet2012", data_dir=cfg.data_dir or None)
    # Offline: the user's tars in manual_dir; TFDS prepares once, later runs reuse data_dir.
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=cfg.manual_dir))
    return builder


# ---------------------------------------------------------------- preprocessing
def _normalize(image: tf.Tensor) -> tf.Tensor:
    return (tf.cast(image, tf.float32) / 255.0 - MEAN_RGB) / STD_RGB


def train_preprocess(image: tf.Tensor, image_size: int, seed: int) -> tf.Tensor:
    """Random resized crop (8%-100% area, 3/4-4/3 aspect) + horizontal flip."""
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), min_object_covered=0.0,
        aspect_ratio_range=(0.75, 1.33), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, size)
    image = tf.image.resize(image, (image_size, image_size))
    image = tf.image.random_flip_left_right(image)
    return _normalize(image)


def eval_preprocess(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize the shorter side to image_size/0.875, then center-crop image_size."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (image_size / 0.875) / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new)
    image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
    return _normalize(image)


def _decode_file(path: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


# ---------------------------------------------------------------- public API
def describe(cfg) -> DataSpec:
    """Classes and split sizes of cfg.dataset (prepares imagenet2012 on first use)."""
    if cfg.dataset == "synthetic":
        return DataSpec(cfg.num_classes, None, None)
    if cfg.dataset == "digits":
        x_train, _, x_test, _ = digits_arrays(32)
        return DataSpec(10, len(x_train), len(x_test))
    if cfg.dataset == "imagenet2012":
        info = imagenet_builder(cfg).info
        return DataSpec(info.features["label"].num_classes, info.splits["train"].num_examples,
                        info.splits["validation"].num_examples)
    splits = folder_splits(cfg.dataset[len("folder:"):])
    files, _, classes = splits["train"]
    if not files:
        raise ValueError(f"no images under {cfg.dataset[len('folder:'):]}")
    return DataSpec(len(classes), len(files), len(splits["eval"][0]) if "eval" in splits else None)


def steps_per_epoch(cfg, spec: DataSpec, num_workers: int) -> int:
    """cfg.steps_per_epoch, else one pass of the training set at the global batch."""
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    if spec.train_examples is None:
        return SYNTHETIC_STEPS_PER_EPOCH
    return max(1, spec.train_examples // (cfg.per_worker_batch * num_workers))


def shard_indices(num_examples: int, num_shards: int, shard_index: int) -> np.ndarray:
    """The example indices a shard owns: every num_shards-th, like tf.data's shard()."""
    return np.arange(shard_index, num_examples, num_shards)


def train_dataset(cfg, num_shards: int, shard_index: int) -> tf.data.Dataset:
    """Endless per-worker batches of (image float32 [S,S,3], label int64) from this worker's shard."""
    seed = cfg.seed * 1000 + shard_index  # a different shuffle per worker, reproducible per seed
    size, batch = cfg.image_size, cfg.per_worker_batch
    if cfg.dataset == "synthetic":
        # Made once, on the device, and repeated: throughput runs measure the model, not the input.
        gen = tf.random.Generator.from_seed(seed)
        images = gen.uniform((batch, size, size, 3), dtype=tf.float32)
        labels = gen.uniform((batch,), maxval=cfg.num_classes, dtype=tf.int64)
        return tf.data.Dataset.from_tensors((images, labels)).repeat()
    if cfg.dataset == "digits":
        x_train, y_train, _, _ = digits_arrays(size)
        ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shard(num_shards, shard_index)
        ds = ds.cache().shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
    elif cfg.dataset == "imagenet2012":
        ds = imagenet_builder(cfg).as_dataset(split="train", shuffle_files=False)
        ds = ds.shard(num_shards, shard_index).shuffle(10_000, seed=seed)
        ds = ds.map(lambda ex: (train_preprocess(ex["image"], size, seed), ex["label"]),
                    num_parallel_calls=tf.data.AUTOTUNE)
    else:
        files, labels, _ = folder_splits(cfg.dataset[len("folder:"):])["train"]
        ds = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int64)))
        ds = ds.shard(num_shards, shard_index).shuffle(len(files), seed=seed)
        ds = ds.map(lambda f, y: (train_preprocess(_decode_file(f), size, seed), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.repeat().batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(cfg, batch_size: int | None = None) -> tf.data.Dataset | None:
    """The whole held-out split, batched, in a fixed order; None when the dataset has none."""
    size, batch = cfg.image_size, batch_size or cfg.per_worker_batch
    if cfg.dataset == "synthetic":
        return None
    if cfg.dataset == "digits":
        _, _, x_test, y_test = digits_arrays(size)
        ds = tf.data.Dataset.from_tensor_slices((x_test, y_test)).cache()
    elif cfg.dataset == "imagenet2012":
        ds = imagenet_builder(cfg).as_dataset(split="validation", shuffle_files=False)
        ds = ds.map(lambda ex: (eval_preprocess(ex["image"], size), ex["label"]),
                    num_parallel_calls=tf.data.AUTOTUNE)
    else:
        splits = folder_splits(cfg.dataset[len("folder:"):])
        if "eval" not in splits:
            return None
        files, labels, _ = splits["eval"]
        ds = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int64)))
        ds = ds.map(lambda f, y: (eval_preprocess(_decode_file(f), size), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def ps_dataset_fn(cfg) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """The parameter-server arm's dataset_fn (for DatasetCreator): one pipeline per worker.

    ParameterServerStrategy gives every worker the same input_context (1 pipeline, id 0), so sharding
    by it keeps the whole set: each worker reads the whole training set, in an order drawn on the
    worker when it builds its pipeline, so workers see different batches
    (digits: a fresh permutation per pass; other real datasets: a random offset into train_dataset's).
    dataset_fn runs traced (no variables, no eager .numpy()): synthetic and digits are built here."""
    size, batch = cfg.image_size, cfg.per_worker_batch
    if cfg.dataset == "digits":  # digits_arrays resizes eagerly: once, here on the chief
        x_train, y_train, _, _ = digits_arrays(size)

    def worker_seed() -> tf.Tensor:
        return tf.cast(tf.timestamp() * 1e6, tf.int64) % (2**31 - 1)  # evaluated on the worker

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        shards, index = input_context.num_input_pipelines, input_context.input_pipeline_id
        if cfg.dataset == "synthetic":  # train_dataset's tf.random.Generator is a variable: not allowed here
            images = tf.random.stateless_uniform((batch, size, size, 3), seed=[cfg.seed, 0])
            labels = tf.random.stateless_uniform((batch,), seed=[cfg.seed, 1], maxval=cfg.num_classes,
                                                 dtype=tf.int64)
            return tf.data.Dataset.from_tensors((images, labels)).repeat()
        if cfg.dataset == "digits":  # a fresh permutation per pass, seeded by (worker seed, pass)
            seed, n = worker_seed(), len(x_train)
            images, labels = tf.constant(x_train), tf.constant(y_train)
            order = tf.data.Dataset.range(shards * (1 << 40)).map(lambda e: tf.random.experimental.stateless_shuffle(
                tf.range(index, n, shards, dtype=tf.int64), seed=tf.stack([seed, e])))
            ds = order.unbatch().batch(batch, drop_remainder=True)
            return ds.map(lambda i: (tf.gather(images, i), tf.gather(labels, i))).prefetch(tf.data.AUTOTUNE)
        ds = train_dataset(cfg, num_shards=shards, shard_index=index)
        ds = ds.unbatch().skip(worker_seed() % (64 * batch))  # workers out of phase in the same stream
        return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    return dataset_fn
