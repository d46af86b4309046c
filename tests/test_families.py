"""What the captioned families (GAN, VAE) take from a host batch."""

import numpy as np
import pytest

from conftest import load_config
from mmgen_jax.families import base


def _host_batch(with_label):
    batch = {
        "image": np.zeros((2, 32, 32, 3), np.float32),
        "text": np.ones((2, 8), np.int32),
        "index": np.array([3, 2**32 + 5], np.int64),
    }
    if with_label:
        batch["label"] = np.array([7, 1], np.int64)
    return batch


@pytest.mark.parametrize("name", ["gan", "vae"])
def test_label_heads_take_the_label_and_indices_fit_uint32(name):
    config = load_config(name, "smoke")
    config.train.aux_classifier_weight = 1.0
    out = base.captioned_batch(_host_batch(with_label=True), config)
    assert out["index"].dtype == np.uint32 and out["index"].tolist() == [3, 5]
    assert out["label"].dtype == np.int32 and out["label"].tolist() == [7, 1]

    config.train.aux_classifier_weight = 0.0
    assert "label" not in base.captioned_batch(_host_batch(with_label=True), config)


def test_label_heads_on_unlabelled_data_is_a_clear_error():
    config = load_config("vae", "smoke")
    config.train.aux_classifier_weight = 1000.0
    with pytest.raises(ValueError, match="aux_classifier_weight=0"):
        base.captioned_batch(_host_batch(with_label=False), config)
