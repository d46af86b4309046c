"""The sampling CLI: captions file -> PNGs + index.jsonl, quick grid, clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from mmgen_jax import train

CAPTIONS = [
    "a red handwritten seven on a blue background",
    "蓝色背景上的红色手写数字七",
    "the digit 3 in white over black " * 5,
]


def _sample(*args, check=True):
    return subprocess.run(
        [sys.executable, "-m", "mmgen_jax.sample", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    from conftest import load_config

    config = load_config("gan", "smoke")
    config.data.data_dir = data_dir
    config.train.num_steps = 2
    workdir = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(config, str(workdir))
    return workdir


def test_captions_file_to_pngs_and_index(tmp_path, run_dir):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS) + "\n\n", encoding="utf-8")
    outs = []
    for name in ("a", "b"):
        _sample(
            f"--workdir={run_dir}",
            f"--captions_file={captions}",
            f"--out_dir={tmp_path / name}",
            "--seed=3",
            f"--batch_size={2 if name == 'b' else 8}",
        )
        index = [
            json.loads(line)
            for line in (tmp_path / name / "index.jsonl").read_text("utf-8").splitlines()
        ]
        assert [r["caption"] for r in index] == [c.strip() for c in CAPTIONS]
        images = [np.asarray(Image.open(tmp_path / name / r["file"])) for r in index]
        assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)
        outs.append(images)
    # Same seed, different batch size: the same images.
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_quick_grid(tmp_path, run_dir):
    out = tmp_path / "grid.png"
    _sample(f"--workdir={run_dir}", f"--caption={CAPTIONS[0]}", "--num=16", f"--out={out}")
    assert Image.open(out).size[1] > 2 * 64


def test_workdir_without_checkpoint_is_a_clear_error(tmp_path, run_dir):
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.json").write_text((run_dir / "config.json").read_text())
    result = _sample(
        f"--workdir={empty}", "--caption=x", f"--out={tmp_path / 'g.png'}", check=False
    )
    assert result.returncode != 0 and "no checkpoint in" in result.stderr


def test_non_utf8_captions_file_is_a_clear_error(tmp_path, run_dir):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    result = _sample(
        f"--workdir={run_dir}", f"--captions_file={bad}", f"--out_dir={tmp_path}", check=False
    )
    assert result.returncode != 0 and "is not UTF-8" in result.stderr


def test_vae_only_modes_on_a_gan_run_are_a_clear_error(tmp_path, run_dir):
    result = _sample(
        f"--workdir={run_dir}", "--mode=image2text", f"--out_dir={tmp_path}", check=False
    )
    assert result.returncode != 0
    assert "--mode=image2text needs a model that can image_to_text" in result.stderr
    assert "Traceback" not in result.stderr
