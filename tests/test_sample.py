"""The sampling CLI (run in-process): captions file -> PNGs + index.jsonl, quick grid, clear
errors."""

import json

import commands
import jax
import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from mmgen_jax import sample, train

CAPTIONS = [
    "a red handwritten seven on a blue background",
    "蓝色背景上的红色手写数字七",
    "the digit 3 in white over black " * 5,
]


def _sample(*args):
    """Runs the sampling command in-process; it must succeed."""
    commands.run(sample, *args)


def _error(*args):
    """The sampling command's one FATAL line (it must exit 1, without a traceback)."""
    (line,) = commands.fatal_lines(sample, *args)
    return line


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
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
    assert "no checkpoint in" in _error(
        f"--workdir={empty}", "--caption=x", f"--out={tmp_path}/g.png"
    )


def test_non_utf8_captions_file_is_a_clear_error(tmp_path, run_dir):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    line = _error(f"--workdir={run_dir}", f"--captions_file={bad}", f"--out_dir={tmp_path}")
    assert "is not UTF-8" in line


def test_vae_only_modes_on_a_gan_run_are_a_clear_error(tmp_path, run_dir):
    line = _error(f"--workdir={run_dir}", "--mode=image2text", f"--out_dir={tmp_path}")
    assert "--mode=image2text needs a model with the image_to_text capability" in line


def test_truncated_noise_is_bounded_and_reproducible(run_dir):
    from mmgen_jax import runs

    _, family, _ = runs.load_run(str(run_dir))
    key, index = jax.random.PRNGKey(0), np.arange(512, dtype=np.uint32)
    z = np.asarray(family.noise(key, index, truncation=0.5))
    assert z.shape == (512, family.config.model.noise_dim) and np.abs(z).max() <= 0.5
    # Truncated to [-0.5, 0.5], a standard normal has variance ~0.0796: not a clipped one.
    assert abs(z.var() - 0.0796) < 0.01 and np.mean(np.abs(z) > 0.49) < 0.05
    np.testing.assert_array_equal(z[7:9], family.noise(key, index[7:9], truncation=0.5))
    # Off (None or 0): the normal noise training uses.
    np.testing.assert_array_equal(family.noise(key, index), family.noise(key, index, 0.0))
    assert np.abs(np.asarray(family.noise(key, index))).max() > 2


def test_truncation_flag_draws_other_images_and_rejects_negatives(tmp_path, run_dir):
    grids = {}
    for name, flag in (("plain", "--truncation=0"), ("a", "--truncation=0.3"), ("b", "")):
        out = tmp_path / f"{name}.png"
        args = [f"--workdir={run_dir}", f"--caption={CAPTIONS[0]}", "--num=8", f"--out={out}"]
        _sample(*args, *([flag] if flag else []))
        grids[name] = np.asarray(Image.open(out))
    np.testing.assert_array_equal(grids["plain"], grids["b"])
    assert not np.array_equal(grids["plain"], grids["a"])
    line = _error(
        f"--workdir={run_dir}", "--caption=x", f"--out={tmp_path}/x.png", "--truncation=-1"
    )
    assert "--truncation=-1.0: use T > 0" in line


def test_slerp_keeps_the_endpoints_and_walks_the_arc():
    from mmgen_jax.sample import slerp

    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    walk = slerp(a, b, np.linspace(0, 1, 5))
    np.testing.assert_allclose(walk[[0, -1]], [a, b], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(walk, axis=1), np.linspace(1, 2, 5), atol=1e-6)
    np.testing.assert_allclose(walk[2] / np.linalg.norm(walk[2]), [0.5**0.5] * 2, atol=1e-6)
    np.testing.assert_allclose(slerp(a, 3 * a, np.array([0.5])), [2 * a])  # parallel: a line


def test_interpolation_rows_end_where_generation_does(run_dir):
    from mmgen_jax import runs
    from mmgen_jax.data import tokenizer
    from mmgen_jax.sample import interpolation_rows

    config, family, variables = runs.load_run(str(run_dir))
    length = config.data.max_text_len
    captions = CAPTIONS[:2]
    rows = interpolation_rows(family, variables, captions, length, (3, 5), 4)
    assert rows.shape == (2, 4, 32, 32, 3)
    tokens = tokenizer.encode_batch(captions, length)
    first = np.zeros(1, np.uint32)

    def drawn(caption, seed):
        return family.generate(
            variables, tokens[caption : caption + 1], jax.random.PRNGKey(seed), first
        )[0]

    _assert_near(rows[0, 0], drawn(0, 3))  # noise walk: z(seed 3) ...
    _assert_near(rows[0, -1], drawn(0, 5))  # ... to z(seed 5), caption 0
    _assert_near(rows[1, 0], drawn(0, 3))  # caption walk at z(seed 3): caption 0 ...
    _assert_near(rows[1, -1], drawn(1, 3))  # ... to caption 1
    assert not np.allclose(rows[0, 1], rows[0, 0], atol=1e-3)


def _assert_near(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_interpolate_mode_writes_a_grid(tmp_path, run_dir):
    out = tmp_path / "walk.png"
    _sample(
        f"--workdir={run_dir}",
        "--mode=interpolate",
        f"--caption={CAPTIONS[0]}",
        f"--caption2={CAPTIONS[1]}",
        "--num=5",
        "--truncation=1.5",
        f"--out={out}",
    )
    one = tmp_path / "one.png"
    _sample(
        f"--workdir={run_dir}", "--mode=interpolate", f"--caption={CAPTIONS[0]}", f"--out={one}"
    )
    assert Image.open(out).size[1] > Image.open(one).size[1]  # two rows, then one
    line = _error(f"--workdir={run_dir}", "--mode=interpolate", f"--out={out}")
    assert "--mode=interpolate needs --caption" in line
