"""sample's inputs: a folder with unreadable images is sampled minus those (a warning each and
a count), and captions or a folder are checked before any checkpoint loads."""

import io
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from mmgen_jax import sample


def _png(size=40, colour=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def _folder(path):
    path.mkdir()
    (path / "a_good.png").write_bytes(_png())
    (path / "b_truncated.png").write_bytes(_png(64, (1, 2, 3))[:-200])
    (path / "c_text.jpg").write_text("not an image at all\n")
    (path / "d_empty.jpeg").write_bytes(b"")
    (path / "e_good.PNG").write_bytes(_png(24, (0, 0, 255)))
    (path / "notes.txt").write_text("ignored: not an image name\n")
    return path


def test_unreadable_images_are_skipped_with_a_warning_each_and_a_count(tmp_path, capsys):
    folder = _folder(tmp_path / "images")
    names, images = sample.read_images(str(folder), 16)
    assert names == ["a_good.png", "e_good.PNG"]
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.float32
    np.testing.assert_allclose(images[1, 0, 0], [-1.0, -1.0, 1.0])
    err = capsys.readouterr().err
    for name in ("b_truncated.png", "c_text.jpg", "d_empty.jpeg"):
        assert f"skipped {folder}/{name}: not a readable image" in err
    assert f"skipped 3 of 5 files in {folder}" in err


def test_a_decompression_bomb_is_skipped(tmp_path, monkeypatch, capsys):
    folder = _folder(tmp_path / "images")
    # Over twice the limit PIL raises DecompressionBombError (not an OSError): the 40x40
    # image is a bomb at this limit, the 24x24 one is within it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)
    names, _ = sample.read_images(str(folder), 16)
    assert names == ["e_good.PNG"]
    assert "a_good.png: not a readable image (Image size (1600 pixels) exceeds" in (
        capsys.readouterr().err
    )


def test_a_folder_with_no_readable_image_is_one_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.png").write_text("no")
    with pytest.raises(ValueError, match=r"no file in .*bad is a readable image \(all 1 skipped"):
        sample.read_images(str(folder), 16)


def _sample(*args):
    return subprocess.run(
        [sys.executable, "-m", "mmgen_jax.sample", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_captions_and_folders_are_checked_before_the_checkpoint_loads(tmp_path):
    no_run = tmp_path / "no_run"  # not a run at all: loading it would fail first
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    result = _sample(f"--workdir={no_run}", f"--captions_file={bad}", f"--out_dir={tmp_path}")
    assert result.returncode != 0 and "is not UTF-8" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _sample(
        f"--workdir={no_run}", "--mode=image2text", f"--images_dir={empty}", f"--out_dir={tmp_path}"
    )
    assert result.returncode != 0 and "holds no .png/.jpg/.jpeg files" in result.stderr
