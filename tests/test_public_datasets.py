"""The cifar10, mnist and coco_captions variants, read through the real pipeline on
`tfds.testing.mock_data` (nothing is downloaded).

The reader opens public datasets with `tfds.builder_from_directory`, so each test data_dir
holds the dataset's real metadata (written once by a child process, from the TFDS builder
code) and mock_data, pointed at that directory, supplies random examples.
"""

import pathlib
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import load_config

from mmgen_jax.data import pipeline, prepare, tokenizer

VARIANTS = ("cifar10", "mnist", "coco_captions")
NUM_EXAMPLES = 12


@pytest.fixture(scope="session")
def metadata_dir(tmp_path_factory):
    """A data_dir with each public dataset's metadata (dataset_info.json, features.json)."""
    path = tmp_path_factory.mktemp("public_tfds")
    names = [load_config("gan", v).data.name for v in VARIANTS]
    # In a child process: the coco_captions builder code imports TensorFlow.
    script = textwrap.dedent(f"""
        import pathlib
        import tensorflow_datasets as tfds
        for name in {names!r}:
            b = tfds.builder(name, data_dir={str(path)!r}, file_format="array_record")
            d = pathlib.Path({str(path)!r}) / name / str(b.version)
            d.mkdir(parents=True)
            splits = [
                tfds.core.SplitInfo(
                    name=split, shard_lengths=[{NUM_EXAMPLES}], num_bytes=0,
                    filename_template=tfds.core.ShardedFileTemplate(
                        data_dir=d, dataset_name=b.name, split=split,
                        filetype_suffix="array_record"),
                )
                for split in ("train", "test", "val")
            ]
            b.info.set_splits(tfds.core.SplitDict(splits))
            b.info.write_to_directory(str(d))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    return str(path)


def config_for(variant, data_dir):
    config = load_config("gan", f"smoke,{variant}")
    config.data.data_dir = data_dir
    return config


def mocked(config):
    """mock_data reading the variant's prepared metadata directory."""
    builder_dir = prepare.ensure_prepared(config.data.name, config.data.data_dir)
    return tfds.testing.mock_data(num_examples=NUM_EXAMPLES, data_dir=str(builder_dir))


def eval_batch(config, num=NUM_EXAMPLES, offset=0):
    d = config.data
    return pipeline.eval_batch(
        name=d.name,
        data_dir=d.data_dir,
        split=d.eval_split,
        image_size=d.image_size,
        max_text_len=d.max_text_len,
        num=num,
        offset=offset,
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_stream_batches(variant, metadata_dir):
    config = config_for(variant, metadata_dir)
    d = config.data
    b, s = config.train.batch_size, d.image_size
    with mocked(config):
        stream = pipeline.TrainStream(
            name=d.name,
            data_dir=d.data_dir,
            split=d.train_split,
            image_size=s,
            max_text_len=d.max_text_len,
            global_batch_size=b,
            seed=0,
            num_threads=2,
        )
        batches = [next(stream) for _ in range(3)]  # crosses an epoch (12 examples)
        stream.close()
    for batch in batches:
        assert batch["image"].shape == (b, s, s, 3) and batch["image"].dtype == np.float32
        assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        assert batch["text"].shape == (b, d.max_text_len) and batch["text"].dtype == np.int32
        assert batch["index"].dtype == np.int64
        assert all(tokenizer.decode(t) for t in batch["text"])
        assert ("label" in batch) == (variant != "coco_captions")
    np.testing.assert_array_equal(np.concatenate([x["index"] for x in batches]), np.arange(3 * b))


@pytest.mark.parametrize("variant", ["cifar10", "mnist"])
def test_class_captions_name_the_class(variant, metadata_dir):
    config = config_for(variant, metadata_dir)
    assert config.model.num_classes == 10 and config.train.aux_classifier_weight > 0
    with mocked(config):
        names = (
            tfds.builder_from_directory(str(prepare.prepared_dir(config.data.name, metadata_dir)))
            .info.features["label"]
            .names
        )
        batch = eval_batch(config)
    assert len(names) == 10 and batch["label"].dtype == np.int32
    for caption, label in zip(batch["caption"], batch["label"], strict=True):
        assert names[label] in caption and caption != names[label]
    templates = {c.replace(names[y], "") for c, y in zip(batch["caption"], batch["label"])}
    assert len(templates) > 1  # several templates are in use


def test_class_caption_templates():
    assert pipeline.class_caption("airplane", 0) == pipeline.class_caption("airplane", 0)
    captions = {pipeline.class_caption("airplane", i) for i in range(30)}
    assert len(captions) == 3 and all("airplane" in c and " a airplane" not in c for c in captions)
    digits = {pipeline.class_caption("7", i) for i in range(30)}
    assert "the digit 7" in digits and any("seven" in c for c in digits)


def test_coco_caption_is_picked_by_stream_index(metadata_dir):
    config = config_for("coco_captions", metadata_dir)
    assert config.train.aux_classifier_weight == 0 and config.data.image_size == 64
    with mocked(config):
        first, again = eval_batch(config), eval_batch(config)
        source = pipeline.load_source(config.data.name, config.data.eval_split, metadata_dir)
        examples = [source[i] for i in range(NUM_EXAMPLES)]
    assert first["caption"] == again["caption"]  # same index, same caption
    assert first["image"].shape == (NUM_EXAMPLES, 64, 64, 3)
    for caption, example in zip(first["caption"], examples, strict=True):
        texts = [pipeline._as_str(t) for t in example["captions"]["text"]]
        assert caption in texts and caption
    # The same example in later epochs (stream index + k * len) may get another caption.
    epochs = [
        [pipeline.caption_of(ex, None, i + k * NUM_EXAMPLES) for i, ex in enumerate(examples)]
        for k in range(4)
    ]
    assert any(epoch != epochs[0] for epoch in epochs[1:])
    assert epochs[0] == first["caption"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_unprepared_public_variant_fails_at_once(variant, tmp_path):
    config = config_for(variant, str(tmp_path))
    start = time.monotonic()
    with pytest.raises(prepare.DatasetNotPreparedError) as error:
        eval_batch(config, num=1)
    assert time.monotonic() - start < 5
    command = (
        f"python -m mmgen_jax.data.prepare --dataset={config.data.name} "
        f"--data_dir={tmp_path} --download"
    )
    assert command in str(error.value)
    assert not any(pathlib.Path(tmp_path).iterdir())  # nothing was downloaded or written
