import hashlib
import io
from collections import Counter
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from train import data
from train.config import RunConfig

SYNSETS = ("n01440764", "n01443537")  # labels 0 and 1 in ILSVRC2012's synset order


def _jpeg(color: tuple[int, int, int], size=(40, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def mini_ilsvrc(tmp_path_factory):
    """A miniature ILSVRC2012 manual dir: 2 classes x 3 train JPEGs, 4 validation JPEGs."""
    manual = tmp_path_factory.mktemp("manual")
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
        for label, synset in enumerate(SYNSETS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for i in range(3):  # class 0 red, class 1 blue: the label is visible in the pixels
                    _add(t, f"{synset}_{i}.JPEG", _jpeg((250, 0, 0) if label == 0 else (0, 0, 250)))
            _add(outer, f"{synset}.tar", inner.getvalue())
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as t:
        for i in range(1, 5):
            _add(t, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg((0, 250, 0)))
    return manual


def test_imagenet2012_tfds_builder_on_made_up_tars(mini_ilsvrc, tmp_path):
    cfg = RunConfig(dataset="imagenet2012", manual_dir=str(mini_ilsvrc), data_dir=str(tmp_path / "tfds"),
                    image_size=32, per_worker_batch=2).validate()
    spec = data.describe(cfg)
    assert (spec.num_classes, spec.train_examples, spec.eval_examples) == (1000, 6, 4)
    # The builder's own examples: decodable JPEGs, labelled by synset.
    raw = list(data.imagenet_builder(cfg).as_dataset(split="train").as_numpy_iterator())
    by_label = {}
    for ex in raw:
        by_label.setdefault(int(ex["label"]), []).append(ex["image"])
    assert sorted(by_label) == [0, 1] and all(len(v) == 3 for v in by_label.values())
    assert all(img.shape == (48, 40, 3) for v in by_label.values() for img in v)
    assert np.mean([img[..., 0].mean() for img in by_label[0]]) > 200  # red = n01440764 = 0
    assert np.mean([img[..., 2].mean() for img in by_label[1]]) > 200  # blue = n01443537 = 1
    # Our pipeline on top: augmented, normalized batches of the right shape; eval center crops.
    images, labels = next(iter(data.train_dataset(cfg, num_shards=1, shard_index=0)))
    assert images.shape == (2, 32, 32, 3) and set(labels.numpy()) <= {0, 1}
    assert sum(int(b[1].shape[0]) for b in data.eval_dataset(cfg)) == 4


def test_imagenet2012_without_the_tars_is_a_config_error(tmp_path):
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="has no ILSVRC2012_img_train.tar"):
        RunConfig(dataset="imagenet2012", manual_dir=str(tmp_path)).validate()


def test_a_folder_without_images_is_one_line_and_no_spec(tmp_path, capsys):
    from train import measure

    (tmp_path / "cats").mkdir()
    assert measure.dataset_spec("t", RunConfig(dataset=f"folder:{tmp_path}")) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("t: error: no images under")


def test_ps_dataset_fn_gives_per_worker_batches():
    cfg = RunConfig(dataset="digits", per_worker_batch=8)
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0)
    images, labels = next(iter(data.ps_dataset_fn(cfg)(ctx)))
    assert images.shape == (8, 32, 32, 3) and labels.shape == (8,)


def test_digits_real_data_split():
    x_train, y_train, x_test, y_test = data.digits_arrays(32)
    assert x_train.shape[1:] == (32, 32, 3) and len(x_train) + len(x_test) == 1797
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert sorted(set(y_test.tolist())) == list(range(10))


def _fingerprints(images: np.ndarray) -> list[bytes]:
    return [hashlib.sha1(np.ascontiguousarray(img, np.float32).tobytes()).digest() for img in images]


def test_digits_shards_are_disjoint_and_cover_the_training_set():
    """The shards' examples, counted as a multiset, add up to the training set exactly once."""
    cfg = RunConfig(dataset="digits", per_worker_batch=1)
    n = data.describe(cfg).train_examples
    seen: Counter = Counter()
    for i in range(3):
        steps = len(data.shard_indices(n, 3, i))
        shard = Counter(_fingerprints(np.concatenate([x.numpy() for x, _ in data.train_dataset(cfg, 3, i).take(steps)])))
        assert sum(shard.values()) == steps
        seen += shard
    assert seen == Counter(_fingerprints(data.digits_arrays(32)[0]))


def test_shard_indices_partition():
    parts = [data.shard_indices(10, 3, i) for i in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))


def test_shuffle_is_seeded_per_worker():
    cfg = RunConfig(dataset="digits", per_worker_batch=8)
    first = lambda c, i: next(iter(data.train_dataset(c, 2, i)))[1].numpy().tolist()
    assert first(cfg, 0) == first(cfg, 0)
    assert first(cfg, 0) != first(RunConfig(dataset="digits", per_worker_batch=8, seed=1), 0)


def test_synthetic_is_made_once_and_repeated():
    cfg = RunConfig(dataset="synthetic", per_worker_batch=4, num_classes=5)
    ds = data.train_dataset(cfg, 2, 1)
    a, b = [x for x, _ in ds.take(2)]
    assert a.shape == (4, 32, 32, 3) and np.array_equal(a.numpy(), b.numpy())
    assert data.steps_per_epoch(cfg, data.describe(cfg), 2) == data.SYNTHETIC_STEPS_PER_EPOCH


def test_folder_dataset(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                (tmp_path / split / cls / f"{i}.jpg").write_bytes(_jpeg((10, 200, 10)))
    cfg = RunConfig(dataset=f"folder:{tmp_path}", per_worker_batch=2).validate()
    assert data.describe(cfg) == data.DataSpec(2, 4, 4)
    images, labels = next(iter(data.train_dataset(cfg, 1, 0)))
    assert images.shape == (2, 32, 32, 3) and labels.dtype == tf.int64
