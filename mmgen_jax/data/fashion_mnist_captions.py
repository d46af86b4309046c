"""`fashion_mnist_captions`: Fashion-MNIST (Xiao et al., 2017) as 32x32 RGB images with captions.

A real dataset that FID numbers can be compared on, prepared offline from the original IDX
files that the Debian package `dataset-fashion-mnist` installs
(/usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz; `apt-get install dataset-fashion-mnist`).
`MMGEN_FASHION_MNIST_DIR` points at another folder holding the same four files.

- train: the 60,000 training images; test: the 10,000 test images; both stored in the IDX
  files' order.
- image: the 28x28 greyscale image padded with 2 black pixels per side to 32x32 (no
  resampling, so pixels stay the originals), repeated to RGB, stored as raw uint8.
- label: the class (0 T-shirt/top ... 9 Ankle boot); caption: the class name in one of
  several phrasings (`TEMPLATES`), picked by the example's position in its file, so every
  phrasing appears for every class.

Prepare with `python -m mmgen_jax.data.prepare --dataset=fashion_mnist_captions`, or let the
input pipeline do it on first use (about a minute).
"""

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# The class as a noun phrase, and as a bare noun.
NOUN_PHRASES = (
    ("a t-shirt", "t-shirt"),
    ("a pair of trousers", "trousers"),
    ("a pullover", "pullover"),
    ("a dress", "dress"),
    ("a coat", "coat"),
    ("a sandal", "sandal"),
    ("a shirt", "shirt"),
    ("a sneaker", "sneaker"),
    ("a bag", "bag"),
    ("an ankle boot", "ankle boot"),
)
TEMPLATES = (
    "{a}",
    "a photo of {a}",
    "a greyscale picture of {a}",
    "{a} on a black background",
    "a product shot of {a}",
    "fashion item: {noun}",
)


def caption(label: int, template: int) -> str:
    a, noun = NOUN_PHRASES[label]
    return TEMPLATES[template].format(a=a, noun=noun)


def idx_dir() -> str:
    """The folder holding the four IDX files; one clear error when they are not there."""
    folder = os.environ.get("MMGEN_FASHION_MNIST_DIR") or DEFAULT_DIR
    missing = [n for pair in FILES.values() for n in pair if not os.path.isfile(f"{folder}/{n}")]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} are not in {folder}: install them with "
            f"`apt-get install dataset-fashion-mnist` (or set MMGEN_FASHION_MNIST_DIR to a "
            f"folder holding the original *-idx?-ubyte.gz files)"
        )
    return folder


def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array of its declared shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {body.size} bytes for a declared shape {shape}")
    return body.reshape(shape)


def to_rgb32(image: np.ndarray) -> np.ndarray:
    """(28, 28) uint8 -> (32, 32, 3): padded with black, grey repeated to RGB."""
    pad = (IMAGE_SIZE - image.shape[0]) // 2
    padded = np.pad(image, pad)
    return np.repeat(padded[:, :, None], 3, axis=2)


class FashionMnistCaptions(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST, 32x32 RGB, with class-name captions (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The Debian package IDX files, 6 phrasings."}  # noqa: RUF012

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8
                    ),
                    "caption": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                    "image_id": tfds.features.Scalar(
                        dtype=np.int32, doc="Position in the split's IDX file."
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            # Stored in file order (TFDS would shuffle by key): the first N test examples
            # that evaluation reads are the first N of the original test file.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the files come from a system package.
        folder = idx_dir()
        return {
            split: self._generate_examples(f"{folder}/{images}", f"{folder}/{labels}")
            for split, (images, labels) in FILES.items()
        }

    def _generate_examples(self, images_path, labels_path):
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise ValueError(f"{images_path} and {labels_path} hold different numbers of items")
        for i, (image, label) in enumerate(zip(images, labels)):
            label = int(label)
            yield (
                i,
                {
                    "image": to_rgb32(image),
                    "caption": caption(label, i % len(TEMPLATES)),
                    "label": label,
                    "image_id": i,
                },
            )
