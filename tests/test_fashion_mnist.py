"""fashion_mnist_captions: prepared from the Debian package's IDX files (a 40 + 15 example
subset of them, for speed), read through the real pipeline; the clear error when the
files are missing; the GAN and VAE config variants."""

import gzip
import os

import numpy as np
import pytest
from conftest import load_config

from mmgen_jax.data import fashion_mnist_captions as fm
from mmgen_jax.data import pipeline, prepare

REAL = fm.DEFAULT_DIR
needs_files = pytest.mark.skipif(
    not all(os.path.isfile(f"{REAL}/{n}") for pair in fm.FILES.values() for n in pair),
    reason="apt-get install dataset-fashion-mnist",
)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


@needs_files
def test_the_debian_files_hold_fashion_mnist():
    train_images = fm.read_idx(f"{REAL}/{fm.FILES['train'][0]}")
    test_labels = fm.read_idx(f"{REAL}/{fm.FILES['test'][1]}")
    assert train_images.shape == (60000, 28, 28) and test_labels.shape == (10000,)
    assert np.bincount(test_labels).tolist() == [1000] * 10


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """The first 40 train and 15 test examples of the real files, as IDX files."""
    if not os.path.isdir(REAL):
        pytest.skip("apt-get install dataset-fashion-mnist")
    folder = tmp_path_factory.mktemp("fashion_idx")
    kept = {}
    for split, num in (("train", 40), ("test", 15)):
        images, labels = (fm.read_idx(f"{REAL}/{name}")[:num] for name in fm.FILES[split])
        _write_idx(folder / fm.FILES[split][0], images)
        _write_idx(folder / fm.FILES[split][1], labels)
        kept[split] = (images, labels)
    return str(folder), kept


def test_prepared_subset_reads_as_captioned_rgb_batches(subset, tmp_path, monkeypatch):
    folder, kept = subset
    monkeypatch.setenv("MMGEN_FASHION_MNIST_DIR", folder)  # the preparing child sees it
    data_dir = str(tmp_path / "tfds")
    prepare.ensure_prepared("fashion_mnist_captions", data_dir)
    batch = pipeline.eval_batch(
        name="fashion_mnist_captions",
        data_dir=data_dir,
        split="test",
        image_size=32,
        max_text_len=64,
        num=15,
    )
    images, labels = kept["test"]
    assert batch["image"].shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(batch["label"], labels)
    # Padded with black, grey in all three channels, pixels unchanged.
    pixels = np.round((batch["image"] + 1) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(pixels[:, 2:30, 2:30, 0], images)
    assert (pixels[:, :2] == 0).all() and (pixels[..., 0] == pixels[..., 2]).all()
    for i, (text, label) in enumerate(zip(batch["caption"], labels)):
        assert text == fm.caption(int(label), i % len(fm.TEMPLATES))
        assert fm.NOUN_PHRASES[label][1] in text
    assert len(set(batch["caption"])) > 6  # several phrasings
    train = pipeline.load_source("fashion_mnist_captions", "train", data_dir)
    assert len(train) == 40


def test_missing_files_name_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("MMGEN_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(prepare.DatasetNotPreparedError, match="apt-get install dataset-fashion"):
        prepare.ensure_prepared("fashion_mnist_captions", str(tmp_path / "tfds"))


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_config_variants(family):
    c = load_config(family, "fashion_mnist")
    assert c.data.name == "fashion_mnist_captions" and c.data.image_size == 32
    assert c.model.num_classes == 10 and c.eval.best_metric == "fd_fashion"
