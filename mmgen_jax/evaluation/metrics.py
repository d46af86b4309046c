"""Distances between two sets of features, and text->image attribute consistency.

Pure functions of numpy arrays. They run in float64 numpy rather than jitted JAX: these
metrics subtract large nearly equal sums (Fréchet distance, unbiased MMD), where float32
(JAX's default) loses the digits that matter. Sample-by-sample matrices (KID's kernels, the
k-NN distances of precision/recall) are built in row blocks of at most BLOCK_ELEMENTS entries,
so 50,000 samples per side need a few hundred MB, not 20 GB.
"""

import numpy as np


def _features(x, name, at_least):
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (num_samples, feature_dim), got shape {x.shape}")
    if len(x) < at_least:
        raise ValueError(f"{name} has {len(x)} samples; this metric needs at least {at_least}")
    return x


def _psd_sqrt(sigma):
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2), which has the eigenvalues of S1 S2. That needs
    no regularising epsilon for singular covariances (rank < dim, e.g. fewer samples than
    dimensions, or dead ReLU features) and never produces complex parts.
    """
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    root1 = _psd_sqrt(np.asarray(sigma1, np.float64))
    product = root1 @ np.asarray(sigma2, np.float64) @ root1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0, None)))
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(fd, 0.0))  # identical sets give 0 up to rounding, never below


def statistics(x):
    """(mean, covariance) of a feature set x (N, D) in float64: the Gaussian FID fits."""
    x = _features(x, "features", 2)
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(x, y):
    """Fréchet distance between Gaussians fitted to feature sets x (N, D) and y (M, D).

    With fewer samples than dimensions on a side (e.g. 1,000 Inception features of 2,048),
    the same number comes from the samples, without D x D eigendecompositions (tens of
    seconds each at D = 2048 on a CPU): with A, B the centred sets, S1 S2 = A'A B'B / c has
    the nonzero eigenvalues of (A B')(A B')' / c, so tr((S1 S2)^(1/2)) is the sum of the
    singular values of the N x M matrix A B', over sqrt(c), c = (N - 1)(M - 1).
    """
    x, y = _features(x, "x", 2), _features(y, "y", 2)
    if min(len(x), len(y)) > x.shape[1]:
        return frechet_distance_from_stats(*statistics(x), *statistics(y))
    mu_x, mu_y = x.mean(0), y.mean(0)
    a, b = x - mu_x, y - mu_y
    c = (len(x) - 1) * (len(y) - 1)
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(c)
    traces = (a * a).sum() / (len(x) - 1) + (b * b).sum() / (len(y) - 1)
    diff = mu_x - mu_y
    return float(max(diff @ diff + traces - 2 * trace_sqrt, 0.0))


# Kernel and distance matrices are built this many entries at a time (256 MB in float64):
# 50,000 x 50,000 samples would need 20 GB at once.
BLOCK_ELEMENTS = 2**25


def _row_blocks(n_rows, n_cols, block_rows=None):
    """Slices cutting n_rows into blocks of `block_rows` (default: BLOCK_ELEMENTS entries of a
    row block against n_cols columns)."""
    step = block_rows or max(1, BLOCK_ELEMENTS // max(n_cols, 1))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def _polynomial_kernel(a, b):
    """k(a, b) = (a.b / dim + 1)^3, the kernel of KID (Bińkowski et al., 2018)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _kernel_sum(a, b, block_rows=None):
    """Sum of all entries of the kernel matrix k(a, b), built one row block at a time."""
    return sum(
        _polynomial_kernel(a[rows], b).sum() for rows in _row_blocks(len(a), len(b), block_rows)
    )


def mmd2_unbiased(x, y, block_rows=None):
    """Unbiased MMD^2 between samples x (m, D) and y (m, D) under the polynomial kernel.

    The kernel matrices are summed in row blocks (`block_rows`, default from
    BLOCK_ELEMENTS), never held whole."""
    m = len(x)
    trace = lambda a: np.sum(((a * a).sum(1) / a.shape[1] + 1.0) ** 3)  # k(a_i, a_i)
    within = _kernel_sum(x, x, block_rows) - trace(x) + _kernel_sum(y, y, block_rows) - trace(y)
    return float(within / (m * (m - 1)) - 2.0 * _kernel_sum(x, y, block_rows) / (m * m))


def kernel_inception_distance(x, y, num_subsets=50, subset_size=500, seed=0):
    """KID: unbiased MMD^2 averaged over `num_subsets` random subsets of `subset_size` of
    each set (without replacement within a subset). Returns (mean, std over subsets)."""
    x, y = _features(x, "x", 2), _features(y, "y", 2)
    if subset_size < 2:
        raise ValueError(f"KID subset_size must be at least 2, got {subset_size}")
    if min(len(x), len(y)) < subset_size:
        raise ValueError(
            f"KID needs at least subset_size={subset_size} samples per set, got {len(x)} and "
            f"{len(y)}: lower eval.kid_subset_size or raise the number of samples"
        )
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            x[rng.choice(len(x), subset_size, replace=False)],
            y[rng.choice(len(y), subset_size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _pairwise_distances(a, b):
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(squared, 0, None))


def _knn_radii(x, k, block_rows=None):
    """Distance of each row of x to its k-th nearest other row (column 0 of the sorted
    distances is the row itself, at distance 0)."""
    return np.concatenate(
        [
            # copied: a view would keep each whole block alive until the end
            np.partition(_pairwise_distances(x[rows], x), k, axis=1)[:, k].copy()
            for rows in _row_blocks(len(x), len(x), block_rows)
        ]
    )


def _inside(points, centres, radii, block_rows=None):
    """For each point: is it within radii[j] of some centre j? (row blocks of points)"""
    return np.concatenate(
        [
            (_pairwise_distances(points[rows], centres) <= radii[None, :]).any(axis=1)
            for rows in _row_blocks(len(points), len(centres), block_rows)
        ]
    )


def precision_recall(real, fake, k=3, block_rows=None):
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN manifolds.

    Each set's manifold is the union of balls around its samples reaching their k-th nearest
    neighbour. Precision: share of fakes inside the real manifold (are fakes realistic?).
    Recall: share of reals inside the fake manifold (is the real variety covered?).
    Distances are taken in row blocks (`block_rows`, default from BLOCK_ELEMENTS), so memory
    grows with the number of samples, not its square.
    """
    real, fake = _features(real, "real", k + 1), _features(fake, "fake", k + 1)
    precision = np.mean(_inside(fake, real, _knn_radii(real, k, block_rows), block_rows))
    recall = np.mean(_inside(real, fake, _knn_radii(fake, k, block_rows), block_rows))
    return float(precision), float(recall)


def consistency(predicted, targets, held_out=None):
    """Share of images whose predicted attributes all equal the targets.

    predicted, targets: {attribute: int array (N,)} with the same keys. Returns
    `consistency` (all attributes at once), `consistency_<attribute>` (each alone) and, with
    a boolean `held_out` (N,), `consistency_seen` / `consistency_held_out` for the
    combinations present in / absent from the training split (a group with no images is
    left out).
    """
    if set(predicted) != set(targets):
        raise ValueError(f"predicted {sorted(predicted)} and target {sorted(targets)} differ")
    right = {k: np.asarray(predicted[k]) == np.asarray(targets[k]) for k in targets}
    every = np.logical_and.reduce(list(right.values()))
    out = {"consistency": float(every.mean())}
    out.update({f"consistency_{k}": float(v.mean()) for k, v in right.items()})
    if held_out is not None:
        held_out = np.asarray(held_out, bool)
        for name, group in (("seen", ~held_out), ("held_out", held_out)):
            if group.any():
                out[f"consistency_{name}"] = float(every[group].mean())
    return out


def mean_pairwise_distance(groups):
    """Mean, over groups, of the mean Euclidean distance between distinct members of a group.

    groups: feature arrays (n_g, D); groups with fewer than 2 members are skipped. Each group
    weighs the same whatever its size, so a few large groups do not dominate.
    """
    means = []
    for g in groups:
        g = np.asarray(g, np.float64)
        if len(g) < 2:
            continue
        d = _pairwise_distances(g, g)
        means.append(d[np.triu_indices(len(g), 1)].mean())
    if not means:
        raise ValueError("no group has 2 or more members: nothing to measure variety on")
    return float(np.mean(means))


def diversity(generated_groups, real_groups):
    """Variety of generated images per caption relative to real images of the same
    attributes: mean_pairwise_distance(generated) / mean_pairwise_distance(real). 1.0 is as
    varied as real data; a generator that ignores its noise gives ~0."""
    return mean_pairwise_distance(generated_groups) / mean_pairwise_distance(real_groups)


# Luminance weights of RGB (ITU-R BT.601).
_LUMA = np.array([0.299, 0.587, 0.114])


def high_frequency_share(images, cutoff=0.5):
    """Per image (N, H, W, 3), the share of its luminance's spectral power at radial spatial
    frequencies above `cutoff` x Nyquist; the mean (DC) is removed first, so the share is of
    the image's contrast, not of its brightness. Frequencies are in cycles/pixel, radius
    sqrt(fy^2 + fx^2), Nyquist = 0.5 (the corners, radius up to 0.71, count as high)."""
    images = np.asarray(images, np.float64)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got shape {images.shape}")
    luma = images @ _LUMA
    luma = luma - luma.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(luma)) ** 2
    fy = np.fft.fftfreq(images.shape[1])[:, None]
    fx = np.fft.fftfreq(images.shape[2])[None, :]
    high = np.sqrt(fy**2 + fx**2) > cutoff * 0.5
    total = power.sum(axis=(1, 2))
    # A flat image has no contrast: its share is 0 (it has no high frequencies either).
    return np.where(total > 0, (power * high).sum(axis=(1, 2)) / np.maximum(total, 1e-30), 0.0)


def hf_power_ratio(generated, real, cutoff=0.5):
    """Mean high_frequency_share of `generated` images over that of `real` images. 1.0: as
    much fine detail as real data; checkerboard artefacts (period-2 patterns, at Nyquist)
    push it up, blur pulls it down. A few thousand 32x32 FFTs: milliseconds."""
    real_share = high_frequency_share(real, cutoff).mean()
    if real_share <= 0:
        raise ValueError("the real images have no contrast: hf_power_ratio is undefined")
    return float(high_frequency_share(generated, cutoff).mean() / real_share)
