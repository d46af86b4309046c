"""Metrics against SciPy/NumPy references and hand-computed values, and their edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from mmgen_jax import parallel
from mmgen_jax.evaluation import captions, extractors, feature_cache, metrics, settings


def _gaussian(rng, n, dim, scale):
    mixing = rng.normal(size=(dim, dim)) * scale
    return rng.normal(size=(n, dim)) @ mixing + rng.normal(size=dim)


def test_frechet_distance_matches_scipy_sqrtm_reference():
    rng = np.random.default_rng(0)
    x, y = _gaussian(rng, 400, 8, 1.0), _gaussian(rng, 300, 8, 0.5)
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(
        s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2))
    )
    assert metrics.frechet_distance(x, y) == pytest.approx(reference, rel=1e-9)


@pytest.mark.parametrize("n, m", [(30, 20), (20, 300)])
def test_frechet_distance_with_fewer_samples_than_dimensions_equals_the_stats_formula(n, m):
    # The singular-value form used when a set is smaller than the dimension (as 1,000
    # Inception features of 2,048 are) gives the eigendecomposition form's value.
    rng = np.random.default_rng(4)
    x, y = _gaussian(rng, n, 40, 1.0), _gaussian(rng, m, 40, 0.7)
    x_stats, y_stats = metrics.statistics(x), metrics.statistics(y)
    want = metrics.frechet_distance_from_stats(*x_stats, *y_stats)
    # (the eigen form carries ~1e-8 noise: square roots of its rounding-level eigenvalues)
    assert metrics.frechet_distance(x, y) == pytest.approx(want, rel=1e-7)


def test_frechet_distance_identical_sets_is_zero():
    x = _gaussian(np.random.default_rng(1), 200, 16, 1.0)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_with_singular_covariances():
    # 5 samples in 20 dimensions: rank-4 covariances. Shifting a set by c leaves its
    # covariance unchanged, so the distance is exactly |c|^2 (up to the square roots of
    # rounding-size eigenvalues, ~1e-8 each, of the zero directions).
    rng = np.random.default_rng(2)
    x, shift = rng.normal(size=(5, 20)), rng.normal(size=20)
    assert metrics.frechet_distance(x, x + shift) == pytest.approx(shift @ shift, rel=1e-6)
    # Dead (always-zero) feature columns, as after a ReLU, change nothing either.
    padded = np.pad(x, ((0, 0), (0, 3)))
    assert metrics.frechet_distance(padded, padded + np.pad(shift, (0, 3))) == pytest.approx(
        shift @ shift, rel=1e-6
    )


def _mmd2_by_pairs(x, y):
    """Unbiased MMD^2 written as the textbook double sums over distinct pairs."""
    k = lambda a, b: (a @ b / len(a) + 1) ** 3
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 4)), rng.normal(1.0, size=(12, 4))
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(_mmd2_by_pairs(x, y), rel=1e-10)
    # One subset holding every sample: a permutation of each set, the same MMD^2, std 0.
    mean, std = metrics.kernel_inception_distance(x, y, num_subsets=1, subset_size=12)
    assert mean == pytest.approx(_mmd2_by_pairs(x, y), rel=1e-10) and std == 0.0


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, same_std = metrics.kernel_inception_distance(x, y, num_subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    shifted, _ = metrics.kernel_inception_distance(x, y + 1.0, num_subsets=20, subset_size=200)
    assert shifted > 0.1


def test_kid_needs_subset_size_samples():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="at least subset_size=50 samples per set, got 10"):
        metrics.kernel_inception_distance(x, x, num_subsets=2, subset_size=50)


def test_precision_recall_hand_computed():
    # k=1 radii: reals [0, 1, 2, 10] -> 1, 1, 1, 8; fakes [0.5, 20, 5] -> 4.5, 15, 4.5.
    real = np.array([[0.0], [1.0], [2.0], [10.0]])
    fake = np.array([[0.5], [20.0], [5.0]])
    # fake 0.5 lies in the ball of real 0, fake 5 in that of real 10, fake 20 in none;
    # every real lies in some fake's ball (10 in the ball of 20, radius 15).
    assert metrics.precision_recall(real, fake, k=1) == pytest.approx((2 / 3, 1.0))


def test_precision_recall_identical_sets_and_too_few_samples():
    x = np.random.default_rng(5).normal(size=(50, 3))
    assert metrics.precision_recall(x, x, k=3) == (1.0, 1.0)
    with pytest.raises(ValueError, match="needs at least 4"):
        metrics.precision_recall(x[:3], x, k=3)


def test_consistency_all_attributes_and_seen_held_out_groups():
    targets = {"label": np.array([1, 2, 3, 4]), "fg": np.array([0, 0, 1, 1])}
    predicted = {"label": np.array([1, 2, 0, 4]), "fg": np.array([0, 5, 1, 1])}
    held_out = np.array([False, False, True, True])
    out = metrics.consistency(predicted, targets, held_out)
    assert out == {
        "consistency": 0.5,  # rows 0 and 3 match on both attributes
        "consistency_label": 0.75,
        "consistency_fg": 0.75,
        "consistency_seen": 0.5,
        "consistency_held_out": 0.5,
    }
    only_held_out = metrics.consistency(predicted, targets, np.ones(4, bool))
    assert "consistency_seen" not in only_held_out and only_held_out["consistency_held_out"] == 0.5


def test_bleu4_hand_computed():
    # Precisions 5/5, 3/4, 2/3, 1/2 -> geometric mean 0.25^(1/4); brevity exp(1 - 7/5).
    hypothesis, reference = "a red seven on blue", "a red seven on a blue background"
    expected = np.exp(1 - 7 / 5) * 0.25**0.25
    assert captions.corpus_bleu4([hypothesis], [reference]) == pytest.approx(expected)
    # Corpus level: counts are pooled over sentences before the precisions are taken.
    exact = "蓝色背景上的红色手写数字七"
    assert captions.corpus_bleu4([exact, exact], [exact, exact]) == pytest.approx(1.0)
    assert captions.corpus_bleu4(["the the the the"], ["the cat"]) == 0.0
    with pytest.raises(ValueError, match="one reference per hypothesis"):
        captions.corpus_bleu4(["a"], [])


def test_batched_map_pads_splits_and_matches_the_function():
    fn = lambda w, x, y: (x @ w + y[:, None], jnp.sum(x, 1))
    w, x, y = np.ones((3, 2)), np.arange(30.0).reshape(10, 3), np.arange(10.0)
    got = parallel.BatchedMap(fn)(w, x, y, batch_size=6)  # 6 -> 8 rows: 4 devices
    want = jax.tree.map(np.asarray, fn(w, x, y))
    jax.tree.map(np.testing.assert_allclose, got, want)


def test_extractor_registry_and_clear_failures(tmp_path):
    s = settings.defaults()
    with pytest.raises(ValueError, match="unknown eval.extractor 'clip'"):
        extractors.get("clip", s)
    s.evaluator_workdir = str(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="configs/evaluator.py --workdir="):
        extractors.get("evaluator", s)
    # inception_v3's own failures (no converted weights, ...): tests/test_inception.py


class _CountingExtractor:
    """A stand-in feature network that counts the images it reads."""

    def __init__(self, key="stand-in"):
        self.key, self.read = key, 0

    def cache_key(self):
        return self.key

    def __call__(self, images):
        self.read += len(images)
        return np.asarray(images, np.float32).reshape(len(images), -1)[:, :4] * 2, {}


def test_feature_cache_computes_a_split_once_and_stores_its_statistics(tmp_path):
    images = np.random.default_rng(9).uniform(-1, 1, (6, 2, 2, 3))
    extractor = _CountingExtractor()
    path = feature_cache.path_for(extractor, "data/set:1", "test", 6, 32, str(tmp_path))
    assert path == str(tmp_path / "stand-in_data-set-1_test_6_32.npz")
    first = feature_cache.features(extractor, images, path)
    again = feature_cache.features(extractor, images, path)
    assert extractor.read == 6  # the second call read the file
    np.testing.assert_array_equal(first, again)
    mu, sigma = feature_cache.load_statistics(path)
    np.testing.assert_allclose(mu, first.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(first, rowvar=False))
    # Not cacheable (the domain evaluator): computed every time.
    assert feature_cache.path_for(_CountingExtractor(None), "d", "test", 6, 32) is None
    np.savez(tmp_path / "other.npz", features=first)
    with pytest.raises(ValueError, match="not FID statistics"):
        feature_cache.load_statistics(str(tmp_path / "other.npz"))


def _unblocked_precision_recall(real, fake, k):
    """The textbook form, with the whole distance matrices (fine at this size)."""
    d = lambda a, b: np.sqrt(np.clip(((a[:, None] - b[None]) ** 2).sum(-1), 0, None))
    real_radii, fake_radii = np.sort(d(real, real), 1)[:, k], np.sort(d(fake, fake), 1)[:, k]
    cross = d(fake, real)
    precision = (cross <= real_radii[None, :]).any(1).mean()
    recall = (cross <= fake_radii[:, None]).any(0).mean()
    return precision, recall


def _unblocked_mmd2(x, y):
    k = lambda a, b: (a @ b.T / a.shape[1] + 1.0) ** 3
    m = len(x)
    k_xx, k_yy = k(x, x), k(y, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return within - 2 * k(x, y).mean()


@pytest.mark.parametrize("block_rows", [1, 7, None])
def test_blocked_kid_and_precision_recall_equal_the_unblocked_formulas(block_rows):
    rng = np.random.default_rng(12)
    real, fake = rng.normal(size=(40, 6)), rng.normal(0.3, 1.2, size=(40, 6))
    want = _unblocked_precision_recall(real, fake, 3)
    assert metrics.precision_recall(real, fake, 3, block_rows) == pytest.approx(want, abs=0)
    got = metrics.mmd2_unbiased(real, fake, block_rows)
    assert got == pytest.approx(_unblocked_mmd2(real, fake), rel=1e-9, abs=1e-12)


def test_kid_and_precision_recall_never_hold_a_full_matrix(monkeypatch):
    import tracemalloc

    # 2,000 x 2,000 float64 matrices are 32 MB; blocks of 2^17 entries are 1 MB.
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 2**17)
    rng = np.random.default_rng(13)
    real, fake = rng.normal(size=(2000, 8)), rng.normal(0.1, 1.0, size=(2000, 8))
    tracemalloc.start()
    try:
        precision, recall = metrics.precision_recall(real, fake, 3)
        kid, _ = metrics.kernel_inception_distance(real, fake, num_subsets=1, subset_size=2000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2000 * 2000 * 8 / 4  # a quarter of one full matrix (measured: 3.2 MB)
    assert 0.5 < precision <= 1 and 0.5 < recall <= 1 and kid > 0


def _real(data_dir, split, num=256):
    from mmgen_jax.data import pipeline

    return pipeline.eval_batch(
        name="digits_captions",
        data_dir=data_dir,
        split=split,
        image_size=32,
        max_text_len=64,
        num=num,
        at_most=True,
    )["image"]


def test_hf_power_ratio_real_is_one_checkerboard_raises_blur_lowers(data_dir):
    test, train = _real(data_dir, "test"), _real(data_dir, "train")
    ratio = metrics.hf_power_ratio(train, test)
    assert 0.85 < ratio < 1.15, ratio
    assert metrics.hf_power_ratio(test, test) == pytest.approx(1.0)
    # The sub-pixel upsampler's artefact: a pattern of period 2 pixels in both axes.
    yy, xx = np.mgrid[:32, :32]
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0)[None, :, :, None]
    contaminated = np.clip(train + 0.15 * checker, -1, 1)
    assert metrics.hf_power_ratio(contaminated, test) > 1.5
    blurred = train + np.roll(train, 1, 1) + np.roll(train, 1, 2) + np.roll(train, (1, 1), (1, 2))
    assert metrics.hf_power_ratio(blurred / 4, test) < 0.7


def test_high_frequency_share_of_pure_patterns():
    yy, xx = np.mgrid[:16, :16]
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0)  # all power at (Nyquist, Nyquist)
    slow = np.cos(2 * np.pi * xx / 16)  # all power at 1/16 cycle/pixel
    images = np.stack([checker, slow, np.zeros((16, 16))])[..., None].repeat(3, -1)
    np.testing.assert_allclose(metrics.high_frequency_share(images), [1.0, 0.0, 0.0], atol=1e-9)
    with pytest.raises(ValueError, match="no contrast"):
        metrics.hf_power_ratio(images, images[2:])


def test_diversity_is_zero_for_copies_and_about_one_for_the_same_law():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 1, 8)) * 5
    real = centres + rng.normal(size=(20, 6, 8))
    same_law = centres + rng.normal(size=(20, 4, 8))
    copies = np.repeat(centres + rng.normal(size=(20, 1, 8)), 4, axis=1)
    assert metrics.diversity(copies, real) == pytest.approx(0.0, abs=1e-6)
    assert 0.9 < metrics.diversity(same_law, real) < 1.1
    assert metrics.diversity(2 * same_law, 2 * real) == pytest.approx(
        metrics.diversity(same_law, real)
    )
    # Groups of one are skipped; with none left there is nothing to measure.
    assert metrics.mean_pairwise_distance([np.zeros((1, 8)), [[0.0, 0], [3, 4]]]) == 5.0
    with pytest.raises(ValueError, match="no group has 2 or more members"):
        metrics.mean_pairwise_distance([np.zeros((1, 8))])
