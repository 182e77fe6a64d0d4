"""Input pipelines: tfds array_record sources read with grain, no TensorFlow (README, Datasets).

The stream is a pure function of (config, step): a fresh permutation of the split per epoch from
`config.seed`, flip/dequantization noise seeded per element, host h of P reading rows
[h B, (h + 1) B) of each global batch; `get_dataset(..., start_step=k)` resumes exactly.
FFHQ / CelebA-HQ TFRecords are copied once into ArrayRecord (random access)::

    python -m score_jax.datasets convert_tfrecords /data/ffhq/ffhq-r10.tfrecords"""
import argparse
import os
import pathlib
import struct
from collections.abc import Callable, Iterator

import grain
import jax
import numpy as np
from PIL import Image

# The tfds name and (train, eval) split names of each dataset, as in the official code.
_TFDS = {
    "CIFAR10": ("cifar10", "train", "test"),
    "SVHN": ("svhn_cropped", "train", "test"),
    "CELEBA": ("celeb_a", "train", "validation"),
    "LSUN": ("lsun/{category}", "train", "validation"),
    "DIGITS": ("digits", "train", "test"),
}
_TFRECORDS = ("FFHQ", "CelebAHQ")
DATASETS = tuple(_TFDS) + _TFRECORDS
SPLITS = ("train", "eval")
_ARRAY_RECORD_SUFFIX = ".array_record"


def get_data_scaler(config) -> Callable:
    """Data in [0, 1] -> model input: [-1, 1] when `data.centered`, else unchanged."""
    return (lambda x: x * 2. - 1.) if config.data.centered else (lambda x: x)


def get_data_inverse_scaler(config) -> Callable:
    """Inverse of `get_data_scaler`: model space -> [0, 1]."""
    return (lambda x: (x + 1.) / 2.) if config.data.centered else (lambda x: x)


def get_dataset(config, split: str = "train", *, evaluation: bool = False,
                batch_size: int | None = None, additional_dim: int | None = None,
                start_step: int = 0, shard_index: int | None = None,
                shard_count: int | None = None, data_dir: str | None = None,
                uniform_dequantization: bool | None = None) -> grain.DatasetIterator:
    """Iterator over this host's batches of `split` ('train' or 'eval') of `config.data.dataset`:
    dicts of `'image'` float32 (B, H, W, C) in [0, 1] and, for CIFAR10, SVHN and DIGITS, `'label'`
    int64 (B,); `additional_dim` n adds a leading (n,) axis (`start_step` counts single batches).
    `evaluation`: one pass of `eval.batch_size` batches, no flip, last partial batch dropped; else
    endless `training.batch_size`. `batch_size` is per host. ValueError on bad/unprepared data."""
    data = config.data
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; valid: {SPLITS}")
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if data_dir is None:
        data_dir = data.get("data_dir") or None
    if uniform_dequantization is None:
        uniform_dequantization = data.get("uniform_dequantization", False)
    batch_key = "eval.batch_size" if evaluation else "training.batch_size"
    global_batch = config.eval.batch_size if evaluation else config.training.batch_size
    if batch_size is None:
        if global_batch % shard_count:
            raise ValueError(f"{batch_key}={global_batch} is not divisible by the number of "
                             f"hosts ({shard_count})")
        batch_size = global_batch // shard_count
    else:
        batch_key, global_batch = "batch_size * shard_count", batch_size * shard_count
    if global_batch % jax.device_count():
        raise ValueError(f"{batch_key}={global_batch} is not divisible by "
                         f"jax.device_count()={jax.device_count()}")

    source, preprocess, has_label = _source_and_preprocess(config, split, data_dir)
    # Independent seeds for the permutation and the per-example noise; train and eval differ.
    shuffle_seed, noise_seed = (int(s) for s in np.random.SeedSequence(
        [config.seed, SPLITS.index(split)]).generate_state(2))
    flip = data.get("random_flip", False) and not evaluation

    def transform(example, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = preprocess(example)
        if flip and rng.random() < 0.5:
            image = image[:, ::-1]
        if uniform_dequantization:
            image = (image * 255. + rng.random(image.shape, dtype=np.float32)) / 256.
        out = {"image": np.ascontiguousarray(image, dtype=np.float32)}
        if has_label:
            out["label"] = np.int64(example["label"])
        return out

    ds = grain.MapDataset.source(source).shuffle(seed=shuffle_seed)
    ds = ds.repeat(1 if evaluation else None)
    if evaluation:  # Every host gets the same number of full batches.
        ds = ds[:len(ds) // global_batch * global_batch]
    ds = ds.random_map(transform, seed=noise_seed)
    # Host h reads rows [h B, (h + 1) B) of every global batch: the global batch, in order, is the
    # one a single process reads, so per-position draws (the loss's noise) match for any layout.
    ds = ds.batch(batch_size, drop_remainder=True)[shard_index::shard_count][start_step:]
    if additional_dim is not None:
        ds = ds.batch(additional_dim, drop_remainder=True)
    threads = min(8, os.cpu_count() or 1)
    read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
    return iter(ds.to_iter_dataset(read_options))


def _source_and_preprocess(config, split: str, data_dir):
    """(random-access source, example -> float32 (s, s, C) image in [0, 1], has labels)."""
    data = config.data
    if data.dataset not in DATASETS:
        raise ValueError(f"data.dataset={data.dataset!r} is not supported; valid: {DATASETS}")
    channels = 1 if data.dataset == "DIGITS" else 3
    if data.num_channels != channels:
        raise ValueError(f"data.num_channels={data.num_channels} but {data.dataset} images have "
                         f"{channels} channel(s)")
    size = data.image_size
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"data.image_size={size!r}: expected a positive int")
    if data.dataset == "DIGITS" and size != 8:
        raise ValueError(f"data.image_size={size} but DIGITS images are 8x8: set "
                         "data.image_size=8")
    if data.dataset in _TFRECORDS:
        source = _ArrayRecordExamples(_converted_path(data.get("tfrecords_path")))
        stored = source[0].shape
        if stored[:2] != (size, size):
            raise ValueError(f"data.image_size={size} but the {data.dataset} records at "
                             f"data.tfrecords_path={data.tfrecords_path!r} are "
                             f"{stored[0]}x{stored[1]}")
        return source, _to_float, False
    return (_tfds_source(config, split, data_dir), _tfds_preprocess(data.dataset, size),
            data.dataset in ("CIFAR10", "SVHN", "DIGITS"))


def _tfds_source(config, split: str, data_dir):
    """The tfds array_record data source of `split`; prepares DIGITS on first use."""
    import tensorflow_datasets as tfds  # Slow to import; only these datasets need it.

    data = config.data
    name, train_split, eval_split = _TFDS[data.dataset]
    if data.dataset == "LSUN":
        if not data.get("category"):
            raise ValueError("data.dataset='LSUN' needs data.category (e.g. 'bedroom', "
                             "'church_outdoor')")
        name = name.format(category=data.category)
    if data.dataset == "DIGITS":
        builder = _prepared_digits(data_dir)
    else:
        builder = tfds.builder(name, data_dir=data_dir)
    tfds_split = train_split if split == "train" else eval_split
    try:
        return builder.as_data_source(split=tfds_split)
    except Exception as e:  # noqa: BLE001 - turned into one clear error below.
        how = (f"prepare it once with `tfds build {name} --file_format=array_record"
               f"{' --data_dir=' + str(data_dir) if data_dir else ''}` (downloads; most tfds "
               "builders need TensorFlow to prepare, in any environment: reading does not)")
        if not builder.is_prepared():
            raise ValueError(f"data.dataset={data.dataset!r}: tfds dataset {name!r} is not "
                             f"prepared in data.data_dir={data_dir!r} ({builder.data_dir}); "
                             f"{how}") from e
        raise ValueError(f"data.dataset={data.dataset!r}: tfds dataset {name!r} at "
                         f"{builder.data_dir} cannot be read as array_record ({e}); {how}") from e


def _prepared_digits(data_dir):
    """The DIGITS builder, prepared in `data_dir` on first use (safe for concurrent processes)."""
    from score_jax import digits

    builder = digits.Digits(data_dir=data_dir)
    if builder.is_prepared():
        return builder
    try:
        builder.download_and_prepare(file_format="array_record")
    except OSError:
        # Another process won tfds' rename of its temporary folder: use its files.
        builder = digits.Digits(data_dir=data_dir)
        if not builder.is_prepared():
            raise
    return builder


def _tfds_preprocess(dataset: str, size: int) -> Callable[[dict], np.ndarray]:
    """The per-dataset resize: tfds example -> float32 (size, size, C) in [0, 1]."""
    if dataset in ("CIFAR10", "SVHN"):
        return lambda ex: _resize(_to_float(ex["image"]), (size, size), Image.BILINEAR)
    if dataset == "CELEBA":
        return lambda ex: _resize_small(_central_crop(_to_float(ex["image"]), 140), size)
    if dataset == "LSUN" and size == 128:
        return lambda ex: _central_crop(_resize_small(_to_float(ex["image"]), size), size)
    if dataset == "LSUN":
        return lambda ex: _to_float(_crop_resize(ex["image"], size))
    return lambda ex: _to_float(ex["image"])


def _to_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] (`tf.image.convert_image_dtype`)."""
    return np.asarray(image, np.float32) / 255.


def _resize(image: np.ndarray, shape: tuple[int, int], resample) -> np.ndarray:
    """float32 (H, W, C) -> (h, w, C); antialiased when shrinking, like tf.image.resize."""
    if image.shape[:2] == tuple(shape):
        return image  # An antialiased resize to the same size is the identity.
    h, w = shape
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]))
                                .resize((w, h), resample)) for c in range(image.shape[-1])], -1)


def _central_crop(image: np.ndarray, size: int) -> np.ndarray:
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


def _resize_small(image: np.ndarray, resolution: int) -> np.ndarray:
    """Bilinear resize so that the short side is `resolution` (sides rounded half to even)."""
    ratio = resolution / min(image.shape[:2])
    return _resize(image, (round(image.shape[0] * ratio), round(image.shape[1] * ratio)),
                   Image.BILINEAR)


def _crop_resize(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 -> uint8: central square crop, bicubic resize, truncating cast."""
    image = _central_crop(image, min(image.shape[:2])).astype(np.float32)
    image = _resize(image, (resolution, resolution), Image.BICUBIC)
    return np.clip(image, 0, 255).astype(np.uint8)


def _converted_path(tfrecords_path) -> pathlib.Path:
    """The ArrayRecord file for `data.tfrecords_path` (the path itself if it is one)."""
    if not tfrecords_path:
        raise ValueError("data.tfrecords_path is not set; FFHQ and CelebAHQ read the authors' "
                         "TFRecord file converted by `convert_tfrecords`")
    path = pathlib.Path(tfrecords_path)
    converted = path if path.suffix == _ARRAY_RECORD_SUFFIX else path.with_suffix(
        _ARRAY_RECORD_SUFFIX)
    if converted.exists():
        return converted
    if path.exists():
        raise ValueError(f"data.tfrecords_path={str(path)!r} is not converted yet: run "
                         f"`python -m score_jax.datasets convert_tfrecords {path}` once "
                         f"(writes {converted})")
    raise ValueError(f"data.tfrecords_path={str(path)!r} does not exist")


def _tfrecords(path) -> Iterator[bytes]:
    """The records of a TFRecord file (u64 length, u32 crc, data, u32 crc; little endian).
    CRCs are not checked; a truncated file raises."""
    with open(path, "rb") as f:
        while header := f.read(12):
            if len(header) < 12:
                raise ValueError(f"{path}: truncated TFRecord header")
            (length,) = struct.unpack("<Q", header[:8])
            record = f.read(length)
            if len(record) < length or len(f.read(4)) < 4:
                raise ValueError(f"{path}: truncated TFRecord")
            yield record


def convert_tfrecords(tfrecords_path, out_path=None) -> pathlib.Path:
    """Copies the records of a TFRecord file, unchanged, into an ArrayRecord file.
    Returns its path (default: the `.array_record` suffix, where `get_dataset` looks)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    src = pathlib.Path(tfrecords_path)
    if not src.exists():
        raise ValueError(f"data.tfrecords_path={str(src)!r} does not exist")
    out = pathlib.Path(out_path) if out_path else src.with_suffix(_ARRAY_RECORD_SUFFIX)
    tmp = out.with_name(out.name + ".incomplete")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")  # One record per chunk: fast reads.
    for record in _tfrecords(src):
        writer.write(record)
    writer.close()
    tmp.replace(out)
    return out


def _parse_example(record: bytes) -> np.ndarray:
    """`tf.train.Example{shape: (C, H, W), data}` -> uint8 (H, W, C)."""
    from tensorflow_datasets.proto import tf_example_pb2  # TF-free copy of the proto.

    feature = tf_example_pb2.Example.FromString(record).features.feature
    shape = tuple(feature["shape"].int64_list.value)
    data = np.frombuffer(feature["data"].bytes_list.value[0], np.uint8)
    return data.reshape(shape).transpose(1, 2, 0)


class _ArrayRecordExamples:
    """Random-access uint8 (H, W, C) images of a converted FFHQ / CelebA-HQ file."""

    def __init__(self, path: pathlib.Path):
        self._records = grain.sources.ArrayRecordDataSource([str(path)])

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> np.ndarray:
        return _parse_example(self._records[index])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m score_jax.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert_tfrecords", help=convert_tfrecords.__doc__.split("\n")[0])
    convert.add_argument("tfrecords_path")
    convert.add_argument("out_path", nargs="?")
    args = parser.parse_args(argv)
    print(convert_tfrecords(args.tfrecords_path, args.out_path))


if __name__ == "__main__":
    main()
