"""`digits`: scikit-learn's 8x8 handwritten digits (1,797, not downloaded) as a tfds dataset:
`image` uint8 (8, 8, 1) = (x * 255 + 8) // 16 of pixels 0..16, `label` int64 0..9; split `test` the
first 300 of `RandomState(0).permutation(1797)`, `train` the other 1,497."""
import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
NUM_TEST = 300


def split_indices() -> dict[str, np.ndarray]:
    """Indices into `load_digits()` of each split, sorted: {'train': (1497,), 'test': (300,)}."""
    perm = np.random.RandomState(0).permutation(NUM_EXAMPLES)
    return {"train": np.sort(perm[NUM_TEST:]), "test": np.sort(perm[:NUM_TEST])}


def to_uint8(pixels: np.ndarray) -> np.ndarray:
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
            # tfds encodes numpy images with TensorFlow; a PIL image it encodes with PIL
            # (lossless PNG).
            yield int(i), {"image": Image.fromarray(images[i], mode="L"),
                           "label": int(digits.target[i])}
