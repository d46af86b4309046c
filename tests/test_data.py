"""Tests of the data layer on the real `digits_captions` dataset (no mocks).

The dataset is prepared once per session into a temporary data_dir, through the
same `ensure_prepared` subprocess path that training uses.
"""

import collections
import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmgen_jax.data import digits_captions as dc
from mmgen_jax.data import digits_domain as dd
from mmgen_jax.data import pipeline, prepare, tokenizer

NAME = "digits_captions"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    prepare.ensure_prepared(NAME, path)
    return path


@pytest.fixture(scope="session")
def examples(data_dir):
    """Every stored example of every split, keyed by split."""
    splits = ("train", "test", dd.PHRASING_SPLIT)
    return {split: list(pipeline.load_source(NAME, split, data_dir)) for split in splits}


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    return load_digits()


def stream(data_dir, **overrides):
    kwargs = {
        "name": NAME,
        "data_dir": data_dir,
        "split": "train",
        "image_size": 32,
        "max_text_len": 64,
        "global_batch_size": 8,
        "seed": 0,
        "num_threads": 2,
    }
    kwargs.update(overrides)
    return pipeline.TrainStream(**kwargs)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# Tokenizer.


def test_tokenizer_ascii_round_trip_and_padding():
    ids = tokenizer.encode("a red seven", 16)
    assert ids.dtype == np.int32 and ids.shape == (16,)
    assert list(ids[:2]) == [ord("a") + 3, ord(" ") + 3]
    assert ids[11] == tokenizer.EOS and not ids[12:].any()  # PAD == 0
    assert tokenizer.BOS not in ids
    assert tokenizer.decode(ids) == "a red seven"
    assert tokenizer.decode([tokenizer.BOS, *ids]) == "a red seven"


def test_tokenizer_chinese_round_trip():
    text = "蓝色背景上的红色手写数字七"
    ids = tokenizer.encode(text, 64)
    assert (ids > 0).sum() == len(text.encode("utf-8")) + 1
    assert ids.max() < tokenizer.VOCAB_SIZE == 259
    assert tokenizer.decode(ids) == text


def test_tokenizer_cuts_long_text_at_character_boundary():
    text = "红色" * 10  # 3 bytes per character
    ids = tokenizer.encode(text, 8)  # room for 7 bytes: 2 whole characters
    assert list(ids[6:]) == [tokenizer.EOS, tokenizer.PAD]
    assert tokenizer.decode(ids) == "红色"
    ascii_ids = tokenizer.encode("x" * 100, 8)
    assert ascii_ids[-1] == tokenizer.EOS
    assert tokenizer.decode(ascii_ids) == "x" * 7


def test_tokenizer_batch_and_invalid_bytes():
    batch = tokenizer.encode_batch(["a", "七"], 6)
    assert batch.shape == (2, 6) and batch.dtype == np.int32
    assert tokenizer.decode([0xFF + 3, ord("a") + 3]) == "\ufffda"


# The digits_captions dataset.


def test_numpy_upsampling_equals_pil_bilinear(digits):
    a = digits.images[7] / 16.0
    pil = Image.fromarray(a.astype(np.float32), mode="F").resize((32, 32), Image.BILINEAR)
    np.testing.assert_allclose(dc.upsample(a), np.asarray(pil), atol=1e-5)


def test_captions_and_hold_out_rule():
    assert dd.canonical_caption(7, 2, 4) == ("a red handwritten seven on a blue background")
    assert dd.caption(4, 7, 2, 4) == "蓝色背景上的红色手写数字七"
    assert sorted(dd.pair_index(f, b) for f in range(6) for b in range(6) if f != b) == list(
        range(30)
    )
    held = [
        (d, f, b)
        for d in range(10)
        for f in range(6)
        for b in range(6)
        if f != b and dd.is_held_out(d, f, b)
    ]
    assert len(held) == 30
    assert collections.Counter(d for d, _, _ in held) == {d: 3 for d in range(10)}


def test_features_and_dtypes(data_dir, examples):
    ex = examples["train"][0]
    assert set(ex) == {"image", "caption", "label", "fg", "bg", "held_out", "image_id"}
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
    assert isinstance(ex["caption"], bytes)
    builder = tfds.builder_from_directory(prepare.prepared_dir(NAME, data_dir))
    features = builder.info.features
    assert features["fg"].names == list(dd.COLOR_NAMES)
    assert features["label"].num_classes == 10


def test_split_sizes(examples, digits):
    # Recount from the documented rule, independently of the builder's loop.
    expected = collections.Counter()
    for image_id, digit in enumerate(digits.target):
        for fg, bg in dc.image_pairs(image_id):
            held = dd.is_held_out(digit, fg, bg)
            if image_id % 6 == 0:
                expected["test"] += 1
                expected["test_held_out"] += held
            elif not held:
                expected["train"] += 1
    assert len(examples["train"]) == expected["train"] == 8086
    assert len(examples["test"]) == expected["test"] == 300 * 6
    assert sum(ex["held_out"] for ex in examples["test"]) == (expected["test_held_out"])
    train_ids = {ex["image_id"] for ex in examples["train"]}
    assert train_ids == {i for i in range(1797) if i % 6}


def test_held_out_combinations(examples):
    assert not any(ex["held_out"] for ex in examples["train"])
    assert all(not dd.is_held_out(ex["label"], ex["fg"], ex["bg"]) for ex in examples["train"])
    test_held = {(ex["label"], ex["fg"], ex["bg"]) for ex in examples["test"] if ex["held_out"]}
    assert all(dd.is_held_out(*c) for c in test_held)
    assert len(test_held) >= 25  # most of the 30 held-out combinations


def test_rendered_colours(examples, digits):
    checked = 0
    for ex in examples["test"][:40]:
        image, fg, bg = ex["image"], ex["fg"], ex["bg"]
        digit_image = digits.images[ex["image_id"]]
        for i, j in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
            if digit_image[i, j] == 0:  # no ink in that corner: background colour
                assert tuple(image[i, j]) == dd.PALETTE[bg]
        np.testing.assert_array_equal(image, dc.render(digit_image, fg, bg))
        a = dc.upsample(digit_image / 16.0)
        if a.max() == 1.0:  # full-intensity pixels are exactly the fg colour
            assert {tuple(p) for p in image[a == 1.0]} == {dd.PALETTE[fg]}
            checked += 1
        assert ex["label"] == digits.target[ex["image_id"]]
    assert checked >= 10


def _patterns_used(examples):
    return collections.Counter(dd.pattern_of(ex["caption"].decode()) for ex in examples)


def test_captions_in_examples(examples, digits):
    by_key = {(ex["image_id"], ex["fg"], ex["bg"]): ex for ex in examples["train"]}
    # Image 2 (a two), slot 4, in red (2) on yellow (5): train pattern (2 + 4) % 22 = 6,
    # its wording drawn by the RNG seeded [4321, 2, 4].
    assert digits.target[2] == 2 and dc.image_pairs(2)[4] == (2, 5)
    assert by_key[(2, 2, 5)]["caption"] == b"the red digit 2 on a yellow background"
    # Train patterns only, each equally often in test (the rotation over image_id + slot =
    # 0..1799); about as often in train (which drops the held-out combinations).
    for split, spread in (("train", 40), ("test", 1)):
        counts = _patterns_used(examples[split])
        assert set(counts) == set(dd.TRAIN_PATTERNS), split
        assert max(counts.values()) - min(counts.values()) <= spread, counts
    # Every wording of every train pattern occurs in train (the RNG draws them all).
    wordings = set()
    for ex in examples["train"]:
        text, pattern = ex["caption"].decode(), dd.pattern_of(ex["caption"].decode())
        truth = (ex["label"], ex["fg"], ex["bg"])
        sized = len(dd.variants(pattern))
        wordings.add(
            (pattern, next(v for v in range(sized) if dd.caption(pattern, *truth, v) == text))
        )
    assert wordings == {(p, v) for p in dd.TRAIN_PATTERNS for v in range(len(dd.variants(p)))}
    chinese = sum("色" in ex["caption"].decode() for ex in examples["test"])
    assert 1800 * 6 / 22 < chinese < 1800 * 8 / 22  # 7 of the 22 train patterns are Chinese


def test_test_phrasings_are_the_test_examples_in_held_out_patterns_only(examples):
    phrasings, test = examples[dd.PHRASING_SPLIT], examples["test"]

    def keyed(split):
        return {(ex["image_id"], ex["fg"], ex["bg"]): ex for ex in split}

    assert keyed(phrasings).keys() == keyed(test).keys() and len(phrasings) == 1800
    for key, ex in keyed(phrasings).items():
        same = keyed(test)[key]
        assert (ex["label"], ex["held_out"]) == (same["label"], same["held_out"])
        np.testing.assert_array_equal(ex["image"], same["image"])
    counts = _patterns_used(phrasings)
    assert set(counts) == set(dd.HELD_OUT_PATTERNS)  # every one, and nothing else
    assert min(counts.values()) >= 250
    assert not _patterns_used(examples["train"]).keys() & set(dd.HELD_OUT_PATTERNS)
    # Image 0 (a zero), slot 0, yellow (5) on white (1): held-out pattern 22 + (0 + 0) % 7.
    assert dc.image_pairs(0)[0] == (5, 1)
    assert keyed(phrasings)[(0, 5, 1)]["caption"] == b"a zero in yellow on white"


def test_every_stored_caption_parses_to_its_example(examples):
    # The one parser reads back every caption the builder wrote, in every template/language.
    for split in ("train", "test", dd.PHRASING_SPLIT):
        for ex in examples[split]:
            stated = dd.parse_caption(ex["caption"].decode())
            assert stated == {"label": ex["label"], "fg": ex["fg"], "bg": ex["bg"]}, ex["caption"]


# Preparation.


def test_incomplete_preparation_is_not_read_as_complete(tmp_path):
    root = tmp_path / NAME
    (root / "incomplete.ABCDEF_1.0.0").mkdir(parents=True)
    (root / "incomplete.ABCDEF_1.0.0" / "dataset_info.json").write_text("{}")
    (root / "1.0.0").mkdir()  # no dataset_info.json: not finished
    assert prepare.prepared_dir(NAME, str(tmp_path)) is None


def test_unprepared_public_dataset_fails_at_once(tmp_path):
    start = time.monotonic()
    with pytest.raises(prepare.DatasetNotPreparedError) as error:
        pipeline.load_source("mnist", "train", str(tmp_path))
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert str(tmp_path) in message
    assert (
        f"python -m mmgen_jax.data.prepare --dataset=mnist --data_dir={tmp_path} --download"
    ) in message


def test_concurrent_preparation_and_no_tensorflow_in_reader(tmp_path):
    """Two readers prepare a fresh data_dir at once; neither imports TF."""
    script = textwrap.dedent(f"""
      import sys, threading
      from mmgen_jax.data import pipeline
      streams = [None, None]
      def read(k):
        streams[k] = pipeline.TrainStream(
            name={NAME!r}, data_dir={str(tmp_path)!r}, split='train',
            image_size=16, max_text_len=32, global_batch_size=4, seed=k)
        next(streams[k])
      threads = [threading.Thread(target=read, args=(k,)) for k in (0, 1)]
      for t in threads: t.start()
      for t in threads: t.join()
      assert all(s is not None for s in streams)
      pipeline.eval_batch(name={NAME!r}, data_dir={str(tmp_path)!r},
                          split='test', image_size=16, max_text_len=32, num=4)
      print('tensorflow' in sys.modules)
  """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False"
    entries = sorted(p.name for p in (tmp_path / NAME).iterdir())
    # one complete version, no leftovers
    assert entries == [str(prepare.builder_class(NAME).VERSION)]


# The pipeline.


def test_batch_dtypes_shapes_ranges(data_dir):
    batch = next(stream(data_dir, image_size=24, max_text_len=20))
    assert batch["image"].dtype == np.float32
    assert batch["image"].shape == (8, 24, 24, 3)
    assert -1 <= batch["image"].min() < 0 < batch["image"].max() <= 1
    assert batch["text"].dtype == np.int32 and batch["text"].shape == (8, 20)
    assert (batch["text"] == tokenizer.EOS).sum(axis=1).tolist() == [1] * 8
    for key in ("label", "fg", "bg"):
        assert batch[key].dtype == np.int32 and batch[key].shape == (8,)
    assert batch["held_out"].dtype == np.bool_ and not batch["held_out"].any()
    assert batch["index"].dtype == np.int64


def test_index_is_global_position(data_dir):
    batches = take(stream(data_dir, global_batch_size=6), 3)
    for s, batch in enumerate(batches):
        np.testing.assert_array_equal(batch["index"], np.arange(6 * s, 6 * s + 6))


def test_global_stream_reshuffles_each_epoch():
    ds = pipeline.global_stream(list(range(10)), seed=3)
    epochs = [[ds[n][1] for n in range(e * 10, e * 10 + 10)] for e in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert [ds[n][0] for n in range(25)] == list(range(25))


def test_same_seed_same_batches_other_seed_differs(data_dir):
    a, b = take(stream(data_dir), 3), take(stream(data_dir), 3)
    for x, y in zip(a, b):
        assert_batches_equal(x, y)
    c = take(stream(data_dir, seed=1), 3)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_resume_from_state(data_dir):
    it = stream(data_dir)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 2)
    resumed = stream(data_dir)
    resumed.set_state(state)
    for x, y in zip(expected, take(resumed, 2)):
        assert_batches_equal(x, y)
    assert resumed.get_state()["batches"] == 5


def test_two_processes_cover_the_single_process_batches(data_dir):
    single = take(stream(data_dir), 3)
    shards = [take(stream(data_dir, process_index=k, process_count=2), 3) for k in (0, 1)]
    for s, batch in enumerate(single):
        for k in (0, 1):
            idx = shards[k][s]["index"]
            assert len(idx) == 4 and (idx % 2 == k).all() and (np.diff(idx) > 0).all()
        merged = {key: np.concatenate([shards[0][s][key], shards[1][s][key]]) for key in batch}
        order = np.argsort(merged["index"])
        assert_batches_equal(batch, {k: v[order] for k, v in merged.items()})


def test_state_resumes_on_another_process_count(data_dir):
    two = stream(data_dir, process_index=1, process_count=2)
    take(two, 2)
    one = stream(data_dir)
    one.set_state(json.loads(json.dumps(two.get_state())))
    np.testing.assert_array_equal(next(one)["index"], np.arange(16, 24))


@pytest.mark.parametrize("change", [{"global_batch_size": 16}, {"seed": 5}, {"split": "test"}])
def test_state_from_another_stream_is_rejected(data_dir, change):
    state = stream(data_dir).get_state()
    other = stream(data_dir, **change)
    with pytest.raises(ValueError, match=next(iter(change))):
        other.set_state(state)


def test_indivisible_global_batch_is_rejected(data_dir):
    with pytest.raises(ValueError, match="divisible"):
        stream(data_dir, global_batch_size=9, process_count=2)


def test_eval_batch(data_dir, examples):
    batch = pipeline.eval_batch(
        name=NAME, data_dir=data_dir, split="test", image_size=32, max_text_len=8, num=5, offset=2
    )
    stored = examples["test"][2:7]
    assert batch["caption"] == [ex["caption"].decode() for ex in stored]
    np.testing.assert_array_equal(batch["index"], np.arange(2, 7))
    np.testing.assert_allclose(
        batch["image"], np.stack([ex["image"] for ex in stored]) / 127.5 - 1, atol=1e-6
    )
    assert batch["text"].shape == (5, 8)  # cut, the caption list is not
    with pytest.raises(ValueError, match="1800"):
        pipeline.eval_batch(
            name=NAME,
            data_dir=data_dir,
            split="test",
            image_size=32,
            max_text_len=8,
            num=5,
            offset=1799,
        )


def test_preprocess_grayscale_non_square_and_class_name_text():
    image = np.zeros((28, 40, 1), np.uint8)
    image[:, 6:34] = 255  # the centre square is white, the side bands black
    example = {"image": image, "label": 3}
    out = pipeline.preprocess(example, 32, 16, label_names=["a", "b", "c", "cat"])
    assert out["image"].shape == (32, 32, 3) and np.allclose(out["image"], 1.0)
    assert tokenizer.decode(out["text"]) == pipeline.class_caption("cat", 0) and out["label"] == 3
    assert "cat" in tokenizer.decode(out["text"])
