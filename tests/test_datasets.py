"""Input pipelines, through the real tfds + grain code path, without downloads or TensorFlow.

* DIGITS: the real builder prepares the real data (bundled with scikit-learn) into a temporary
  data_dir, and every property of the stream is checked on it: shapes, values, one pass in
  evaluation, order fixed by the seed, resuming, per-host sharding, flips, dequantization.
* CIFAR10 / SVHN / CELEBA / LSUN: `tfds.testing.mock_data(policy=MockPolicy.USE_CODE)`. It
  replaces `DatasetBuilder.as_data_source` by random examples with each dataset's real feature
  spec (celeb_a: 218x178, lsun: random sizes) and needs neither TensorFlow, network nor files
  (`USE_FILES` needs the metadata files of a prepared dataset, which we do not have). Everything
  after `as_data_source` -- grain, the per-dataset preprocessing -- runs for real.
* The official preprocessing (tf.image.resize with antialiasing) is checked against
  `jax.image.resize`, which implements the same scale-and-translate kernels.
* FFHQ / CelebA-HQ: a small TFRecord file in the authors' format is written here, converted, and
  read back.
"""
import collections
import struct

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from tensorflow_datasets.proto import tf_example_pb2

from score_jax import datasets, digits


def make_config(dataset="DIGITS", image_size=8, num_channels=1, batch_size=16, seed=0, **data):
    return ml_collections.ConfigDict({
        "seed": seed,
        "training": {"batch_size": batch_size},
        "eval": {"batch_size": batch_size},
        "data": {"dataset": dataset, "image_size": image_size, "num_channels": num_channels,
                 "random_flip": False, "centered": False, "uniform_dequantization": False,
                 "data_dir": None, **data},
    })


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """A tfds data_dir holding the prepared DIGITS dataset (prepared by `get_dataset` itself)."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    next(datasets.get_dataset(make_config(data_dir=data_dir)))
    return data_dir


def take(config, n, **kwargs):
    it = datasets.get_dataset(config, **kwargs)
    return [next(it) for _ in range(n)]


def as_rows(images):
    """Images (N, ...) -> set of their bytes, to compare collections of images."""
    return {x.tobytes() for x in np.asarray(images)}


def test_digits_builder(digits_dir):
    assert digits.to_uint8(np.array([0, 1, 8, 15, 16])).tolist() == [0, 16, 128, 239, 255]
    idx = digits.split_indices()
    assert (len(idx["train"]), len(idx["test"])) == (1497, 300)
    assert len(np.union1d(idx["train"], idx["test"])) == 1797
    raw = load_digits()
    for split in ("train", "test"):
        source = tfds.data_source("digits", split=split, data_dir=digits_dir, download=False)
        got = {(ex["image"].tobytes(), int(ex["label"])) for ex in (source[i] for i in
                                                                  range(len(source)))}
        want = {(digits.to_uint8(raw.images[i])[..., None].tobytes(), int(raw.target[i]))
                for i in idx[split]}
        assert len(source) == len(idx[split]) and got == want
        assert source[0]["image"].shape == (8, 8, 1) and source[0]["image"].dtype == np.uint8


def test_digits_batches(digits_dir):
    batch = take(make_config(data_dir=digits_dir, batch_size=16), 1)[0]
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (16, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (16,) and batch["label"].dtype == np.int64
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    np.testing.assert_allclose(batch["image"] * 255, np.round(batch["image"] * 255), atol=1e-4)
    assert set(batch["label"]) <= set(range(10))


def test_evaluation_is_one_pass_over_the_split(digits_dir):
    config = make_config(data_dir=digits_dir, batch_size=32, random_flip=True)
    batches = list(datasets.get_dataset(config, "eval", evaluation=True))
    assert len(batches) == 300 // 32
    images = np.concatenate([b["image"] for b in batches])
    test = tfds.data_source("digits", split="test", data_dir=digits_dir, download=False)
    split = collections.Counter((test[i]["image"] / np.float32(255)).tobytes() for i in range(300))
    got = collections.Counter(x.tobytes() for x in images)
    assert got.total() == 288 and got <= split  # No flips, each test example at most once.


def test_order_is_fixed_by_the_seed(digits_dir):
    a, b = (np.stack([x["image"] for x in take(make_config(data_dir=digits_dir), 3)])
            for _ in range(2))
    c = np.stack([x["image"] for x in take(make_config(data_dir=digits_dir, seed=1), 3)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_resume_at_step_k_continues_the_stream(digits_dir):
    config = make_config(data_dir=digits_dir, random_flip=True, uniform_dequantization=True,
                         batch_size=64)
    full = take(config, 30)  # 30 * 64 > 1497: crosses an epoch boundary.
    for got, want in zip(take(config, 5, start_step=25), full[25:]):
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    it = datasets.get_dataset(config)
    for _ in range(7):
        next(it)
    state = it.get_state()  # The alternative: checkpoint the iterator.
    it = datasets.get_dataset(config)
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["image"], full[7]["image"])
    stacked = take(config, 2, start_step=3, additional_dim=2)
    assert stacked[0]["image"].shape == (2, 64, 8, 8, 1)
    np.testing.assert_array_equal(stacked[1]["image"][1], full[6]["image"])


def test_hosts_get_contiguous_halves_of_the_global_batch(digits_dir):
    """Host h reads rows [16 h, 16 (h + 1)) of each global batch of 32: concatenated in host order
    the hosts' batches are the single-process batch, row for row (so the loss's per-row noise
    meets the same example in any process layout)."""
    config = make_config(data_dir=digits_dir, batch_size=32, uniform_dequantization=True)
    whole = take(config, 3, shard_count=1, shard_index=0)
    halves = [take(config, 3, shard_count=2, shard_index=h) for h in (0, 1)]
    for k in range(3):
        h0, h1 = (halves[h][k]["image"] for h in (0, 1))
        assert h0.shape == (16, 8, 8, 1)
        np.testing.assert_array_equal(np.concatenate([h0, h1]), whole[k]["image"])


def test_random_flip_only_when_training(digits_dir):
    plain = make_config(data_dir=digits_dir, batch_size=256)
    flipping = make_config(data_dir=digits_dir, batch_size=256, random_flip=True)
    x = take(plain, 1)[0]["image"]
    y = take(flipping, 1)[0]["image"]
    mirrored = np.all(y == x[:, :, ::-1], axis=(1, 2, 3)) & ~np.all(y == x, axis=(1, 2, 3))
    assert np.all(np.all(y == x, axis=(1, 2, 3)) | mirrored)
    assert 0.3 < mirrored.mean() < 0.7
    for split in ("train", "eval"):
        x = next(datasets.get_dataset(plain, split, evaluation=True))["image"]
        y = next(datasets.get_dataset(flipping, split, evaluation=True))["image"]
        np.testing.assert_array_equal(x, y)


def test_uniform_dequantization(digits_dir):
    config = make_config(data_dir=digits_dir, batch_size=256)
    x = take(config, 2)
    y = take(config, 2, uniform_dequantization=True)
    u = np.concatenate([b["image"] * 256 - a["image"] * 255 for a, b in zip(x, y)])
    assert u.min() >= -1e-4 and u.max() < 1 + 1e-4
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - 12 ** -0.5) < 0.01
    assert all(0 <= b["image"].min() and b["image"].max() <= 1 for b in y)


@pytest.mark.parametrize("centered", [False, True])
def test_scaler_round_trip(centered):
    config = make_config(centered=centered)
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    scaled = datasets.get_data_scaler(config)(x)
    assert (scaled.min() < 0) == centered and -1 <= scaled.min() and scaled.max() <= 1
    np.testing.assert_allclose(datasets.get_data_inverse_scaler(config)(scaled), x, atol=1e-7)


@pytest.mark.parametrize("dataset,image_size,extra,label", [
    ("CIFAR10", 32, {}, True),
    ("CIFAR10", 16, {}, True),
    ("SVHN", 32, {}, True),
    ("CELEBA", 64, {}, False),
    ("LSUN", 128, {"category": "bedroom"}, False),
    ("LSUN", 24, {"category": "church_outdoor"}, False),
])
def test_named_datasets_through_mocked_tfds(dataset, image_size, extra, label):
    config = make_config(dataset, image_size, 3, batch_size=4, random_flip=True, **extra)
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        for split in ("train", "eval"):
            batch = next(datasets.get_dataset(config, split))
            assert batch["image"].shape == (4, image_size, image_size, 3)
            assert batch["image"].dtype == np.float32
            assert 0 <= batch["image"].min() and batch["image"].max() <= 1
            assert ("label" in batch) == label


def jax_resize(image, shape, method):
    return np.asarray(jax.image.resize(jnp.asarray(image), (*shape, image.shape[-1]), method,
                                       antialias=True))


def test_preprocessing_matches_the_official_tf_ops():
    """The official ops, written with jax.image.resize (= tf.image.resize's kernels)."""
    rng = np.random.default_rng(0)
    celeb = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    got = datasets._tfds_preprocess("CELEBA", 64)({"image": celeb})
    crop = celeb[39:179, 19:159].astype(np.float32) / 255  # central_crop(img, 140)
    np.testing.assert_allclose(got, jax_resize(crop, (64, 64), "linear"), atol=1e-5)

    cifar = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(datasets._tfds_preprocess("CIFAR10", 32)({"image": cifar}),
                                  cifar / np.float32(255))
    np.testing.assert_allclose(datasets._tfds_preprocess("CIFAR10", 64)({"image": cifar}),
                               jax_resize(cifar / np.float32(255), (64, 64), "linear"), atol=1e-5)

    lsun = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    # image_size 128: resize_small (150x200 -> 128x171), then central crop.
    small = jax_resize(lsun / np.float32(255), (128, 171), "linear")
    np.testing.assert_allclose(datasets._tfds_preprocess("LSUN", 128)({"image": lsun}),
                               small[:, 21:149], atol=1e-5)
    # Otherwise crop_resize: central square crop, bicubic resize in [0, 255], cast to uint8.
    want = jax_resize(lsun[:, 25:175].astype(np.float32), (64, 64), "cubic")
    got = datasets._tfds_preprocess("LSUN", 64)({"image": lsun}) * 255
    near_integer = np.abs(want - np.round(want)) < 1e-2  # Truncation is ill-posed there.
    np.testing.assert_array_equal(np.round(got)[~near_integer],
                                  np.floor(np.clip(want, 0, 255))[~near_integer])


def write_tfrecords(path, images_chw):
    """The authors' format: tf.train.Example{shape: int64 (C, H, W), data: uint8 bytes}."""
    with open(path, "wb") as f:
        for image in images_chw:
            example = tf_example_pb2.Example()
            example.features.feature["shape"].int64_list.value.extend(image.shape)
            example.features.feature["data"].bytes_list.value.append(image.tobytes())
            record = example.SerializeToString()
            # Length, its CRC, data, its CRC; the reader does not check CRCs.
            f.write(struct.pack("<QI", len(record), 0) + record + struct.pack("<I", 0))


def test_ffhq_tfrecords_conversion_and_reading(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 3, 16, 16), dtype=np.uint8)
    src = tmp_path / "ffhq-r04.tfrecords"
    write_tfrecords(src, images)
    config = make_config("FFHQ", 16, 3, batch_size=4, tfrecords_path=str(src))
    with pytest.raises(ValueError, match="convert_tfrecords"):
        datasets.get_dataset(config)
    out = datasets.convert_tfrecords(src)
    assert out == tmp_path / "ffhq-r04.array_record"
    for path in (src, out):  # data.tfrecords_path may name either file.
        config.data.tfrecords_path = str(path)
        batches = list(datasets.get_dataset(config, "eval", evaluation=True))
        assert len(batches) == 2 and set(batches[0]) == {"image"}
        got = np.concatenate([b["image"] for b in batches])
        want = images.transpose(0, 2, 3, 1) / np.float32(255)
        assert as_rows(got) <= as_rows(want) and len(as_rows(got)) == 8
    config.data.image_size = 32
    with pytest.raises(ValueError, match="data.image_size=32.*16x16"):
        datasets.get_dataset(config)


def test_missing_tfrecords_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "celebahq-r10.tfrecords"
    config = make_config("CelebAHQ", 1024, 3, batch_size=4, tfrecords_path=str(missing))
    with pytest.raises(ValueError, match=f"data.tfrecords_path='{missing}' does not exist"):
        datasets.get_dataset(config)
    with pytest.raises(ValueError, match=f"data.tfrecords_path='{missing}' does not exist"):
        datasets.convert_tfrecords(missing)
    config.data.tfrecords_path = None
    with pytest.raises(ValueError, match="data.tfrecords_path is not set"):
        datasets.get_dataset(config)


@pytest.mark.parametrize("change,kwargs,message", [
    ({"data.dataset": "MNIST"}, {}, r"data.dataset='MNIST' is not supported; valid: \('CIFAR10'"),
    ({"data.image_size": 32}, {}, "data.image_size=32 but DIGITS images are 8x8"),
    ({"data.num_channels": 3}, {}, "data.num_channels=3 but DIGITS images have 1 channel"),
    ({"training.batch_size": 3}, {}, r"training.batch_size=3 is not divisible by "
                                     r"jax.device_count\(\)=2"),
    ({"eval.batch_size": 5}, {"evaluation": True}, "eval.batch_size=5 is not divisible"),
    ({"training.batch_size": 6}, {"shard_count": 4, "shard_index": 0},
     r"training.batch_size=6 is not divisible by the number of hosts \(4\)"),
    ({}, {"split": "test"}, r"split='test'; valid: \('train', 'eval'\)"),
    ({"data.dataset": "LSUN", "data.num_channels": 3}, {}, "needs data.category"),
])
def test_config_errors(change, kwargs, message, tmp_path):
    assert jax.device_count() == 2  # conftest.py
    config = make_config(data_dir=str(tmp_path))
    for key, value in change.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(ValueError, match=message):
        datasets.get_dataset(config, **kwargs)


def test_unprepared_tfds_dataset_is_a_clear_error(tmp_path):
    config = make_config("CIFAR10", 32, 3, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"'cifar10' is not prepared in data.data_dir=.*tfds build "
                                         r"cifar10 --file_format=array_record"):
        datasets.get_dataset(config)
