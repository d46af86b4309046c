"""Tests of `caption_folder` (a user's own images + captions) on generated folders, prepared
through the same `ensure_prepared` subprocess path that training uses."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import load_config
from PIL import Image

from mmgen_jax import train
from mmgen_jax.data import caption_folder as cf
from mmgen_jax.data import pipeline, prepare

NAME = "caption_folder"
# Images: (file, PIL mode, (width, height)); mixed formats, modes and aspect ratios.
IMAGES = [
    ("rgb.png", "RGB", (40, 24)),
    ("grey.png", "L", (20, 50)),
    ("alpha.png", "RGBA", (33, 33)),
    ("palette.png", "P", (64, 48)),
    ("photo.jpg", "RGB", (90, 60)),
    ("sub/grey.jpg", "L", (32, 32)),
    ("sub/tall.png", "RGB", (16, 70)),
    ("sub/big.png", "RGB", (128, 128)),
    ("wide.png", "RGB", (100, 10)),
    ("tiny.png", "RGB", (8, 8)),
]


def _write_images(root):
    rng = np.random.default_rng(0)
    for name, mode, (w, h) in IMAGES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        channels = {"RGB": 3, "RGBA": 4, "L": 1, "P": 1}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        img = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
        img.save(root / name)
    # A truncated PNG: a valid start that ends mid-file.
    whole = (root / "rgb.png").read_bytes()
    (root / "corrupt.png").write_bytes(whole[: len(whole) // 2])


def _good_rows():
    """Two captions per image; one image forced into test by an explicit split."""
    rows = []
    for name, _, _ in IMAGES:
        rows.append({"image": name, "caption": f"a picture called {name}"})
        rows.append({"image": name, "caption": f"图片 {name}"})
    rows[0]["split"] = "test"
    rows[1]["split"] = "test"
    return rows


def make_folder(root, bad=True):
    """A caption folder; with `bad`, lines 21..25 of captions.jsonl are the bad rows."""
    root.mkdir(parents=True)
    _write_images(root)
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in _good_rows()]
    if bad:
        lines += [
            json.dumps({"image": "corrupt.png", "caption": "broken"}).encode(),  # 21
            json.dumps({"image": "missing.png", "caption": "gone"}).encode(),  # 22
            json.dumps({"image": "rgb.png", "caption": "  "}).encode(),  # 23
            b'{"image": "rgb.png", "caption": "caf\xe9"}',  # 24: Latin-1, not UTF-8
            lines[2],  # 25: duplicate of line 3
        ]
    (root / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return root


def kwargs(root, skip_bad=False):
    return {"path": str(root), "image_size": 32, "skip_bad": skip_bad}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("mine") / "data")


@pytest.fixture(scope="module")
def skipped(folder, tmp_path_factory):
    """The bad folder prepared with skip_bad: {split: [examples]} and its data_dir."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    out = {}
    for split in ("train", "test"):
        out[split] = list(pipeline.load_source(NAME, split, data_dir, kwargs(folder, True)))
    return out, data_dir


def test_default_fails_naming_every_problem(folder, tmp_path):
    with pytest.raises(prepare.DatasetPreparationError) as e:
        prepare.ensure_prepared(NAME, str(tmp_path), kwargs(folder))
    message = str(e.value)
    assert "5 problem(s)" in message
    for line, what in [
        (21, "corrupt.png"),
        (22, "missing.png' not found"),
        (23, "empty caption"),
        (24, "not UTF-8"),
        (25, "duplicate of captions.jsonl:3"),
    ]:
        assert f"captions.jsonl:{line}: " in message and what in message, (line, message)
    assert "skip_bad" in message
    # Nothing half-prepared is ever taken for the dataset.
    assert prepare.prepared_dir(prepare.resolve_name(NAME, kwargs(folder)), str(tmp_path)) is None


def test_skip_bad_keeps_the_good_rows(folder, skipped):
    splits, data_dir = skipped
    examples = splits["train"] + splits["test"]
    assert len(examples) == 2 * len(IMAGES)
    for ex in examples:
        assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    got = sorted((ex["image_path"].decode(), ex["caption"].decode("utf-8")) for ex in examples)
    want = sorted((r["image"], r["caption"]) for r in _good_rows())
    assert got == want
    # The skipped count is recorded with the dataset.
    resolved = prepare.resolve_name(NAME, kwargs(folder, True))
    info = tfds.builder_from_directory(prepare.prepared_dir(resolved, data_dir)).info
    assert "5 bad rows skipped" in info.description


def test_split_assignment_is_stable_and_by_image(skipped):
    splits, _ = skipped
    for split, examples in splits.items():
        for ex in examples:
            path = ex["image_path"].decode()
            want = "test" if path == IMAGES[0][0] else cf.default_split(path)
            assert split == want, path
    # Every caption of an image is in the same split.
    by_split = {s: {ex["image_path"] for ex in exs} for s, exs in splits.items()}
    assert not by_split["train"] & by_split["test"]
    assert cf.default_split("a/b.png") == cf.default_split("a/b.png")
    assert sum(cf.default_split(f"{i}.png") == "test" for i in range(2000)) in range(150, 250)


def test_changed_folder_is_prepared_anew(tmp_path):
    root = make_folder(tmp_path / "data", bad=False)
    before = prepare.resolve_name(NAME, kwargs(root))
    assert prepare.resolve_name(NAME, kwargs(root)) == before
    assert prepare.resolve_name(NAME, {**kwargs(root), "image_size": 16}) != before
    with open(root / "captions.jsonl", "a") as f:
        f.write(json.dumps({"image": "tiny.png", "caption": "one more"}) + "\n")
    assert prepare.resolve_name(NAME, kwargs(root)) != before


def test_csv_input(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    _write_images(root)
    rows = ["image,caption,split", "rgb.png,a red thing,train", 'grey.png,"grey, and tall",test']
    rows += [f"{name},picture of {name}," for name, _, _ in IMAGES]
    (root / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    data_dir = str(tmp_path / "tfds")
    train_ex = list(pipeline.load_source(NAME, "train", data_dir, kwargs(root)))
    test_ex = list(pipeline.load_source(NAME, "test", data_dir, kwargs(root)))
    assert len(train_ex) + len(test_ex) == 2 + len(IMAGES)
    captions = {ex["caption"].decode() for ex in test_ex}
    assert "grey, and tall" in captions


def test_missing_captions_file_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(prepare.DatasetPreparationError, match="no captions file"):
        prepare.ensure_prepared(NAME, str(tmp_path / "tfds"), kwargs(tmp_path / "empty"))
    config = load_config("gan", "smoke,folder")
    with pytest.raises(ValueError, match="--config.data.path="):
        pipeline.builder_kwargs(config.data)


def test_training_on_a_folder(tmp_path):
    config = load_config("gan", "smoke,folder")
    config.data.path = str(make_folder(tmp_path / "data", bad=False))
    config.data.data_dir = str(tmp_path / "tfds")
    config.train.num_steps = 2
    config.train.checkpoint_every = 2
    config.train.sample_every = 2
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    assert (workdir / "checkpoints" / "2").is_dir()
    with open(workdir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows and rows[-1]["step"] == 2
    assert "step_2.png" in os.listdir(workdir / "samples")
