"""`digits`: scikit-learn's bundled 8x8 handwritten digits as a tfds dataset.

The 1,797 images of `sklearn.datasets.load_digits()` ship inside scikit-learn, so preparing this
dataset downloads nothing: it is the small default dataset that runs end to end on a laptop.

* `image`: uint8 (8, 8, 1). The source pixels are integers 0..16; they are rescaled exactly as
  `(x * 255 + 8) // 16` (i.e. x * 255 / 16 rounded half up), so 0 -> 0, 8 -> 128, 16 -> 255.
* `label`: int64 class 0..9.
* Splits: `test` is the 300 images at the first 300 positions of `RandomState(0).permutation(1797)`
  (numpy's legacy RandomState has a frozen stream, so the split never changes); `train` is the
  other 1,497. Each example's key is its index in `load_digits()`; tfds stores a split in the
  (fixed) order of its keys' hashes.

Import this module to register the builder; then `tfds.builder('digits', data_dir=...)` and
`tfds.data_source('digits', ...)` find it. Prepare it as array_record so that `tfds.data_source`
(random access, no TensorFlow) can read it::

    Digits(data_dir=d).download_and_prepare(file_format='array_record')

`score_jax.datasets.get_dataset` does this itself on first use.
"""
import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
NUM_TEST = 300


def split_indices() -> dict[str, np.ndarray]:
    """Indices into `load_digits()` of each split, sorted: {'train': (1497,), 'test': (300,)}."""
    perm = np.random.RandomState(0).permutation(NUM_EXAMPLES)
    return {"train": np.sort(perm[NUM_TEST:]), "test": np.sort(perm[:NUM_TEST])}


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Rescales digits pixels 0..16 (any integer-valued dtype) to uint8 0..255, rounding half up."""
    return ((pixels.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits (a copy of the UCI optdigits test set)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships with scikit-learn.
        return {name: self._generate_examples(idx) for name, idx in split_indices().items()}

    def _generate_examples(self, indices):
        from PIL import Image  # Only needed while preparing, like scikit-learn.
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = to_uint8(digits.images)
        for i in indices:
            # tfds encodes numpy images with TensorFlow; a PIL image it encodes with PIL (lossless PNG).
            yield int(i), {"image": Image.fromarray(images[i], mode="L"), "label": int(digits.target[i])}
