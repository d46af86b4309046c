"""Features of real dataset splits, computed once per feature network and kept on disk.

Inception features of 10,000 real images take minutes on a CPU; a run's evaluation, every
checkpoint's, and `python -m mmgen_jax.fid` compare against the same split. So a split's
features (and their mean and covariance, the FID statistics) are stored in
`~/.cache/mmgen_jax/fid_stats/<network>_<dataset>_<split>_<num>_<size>.npz`, the network
named by a digest of its weights. Extractors whose `cache_key()` is None (the domain
evaluator, retrained per run) are never cached.
"""

import os
import re

import numpy as np

from mmgen_jax.evaluation import metrics

CACHE_DIR = os.path.join("~", ".cache", "mmgen_jax", "fid_stats")


def path_for(extractor, dataset, split, num, image_size, cache_dir=CACHE_DIR):
    """Where a split's features are cached, or None when the extractor is not cacheable."""
    key = extractor.cache_key()
    if key is None:
        return None
    name = re.sub(r"[^A-Za-z0-9._\-]+", "-", f"{key}_{dataset}_{split}_{num}_{image_size}")
    return os.path.join(os.path.expanduser(cache_dir), name + ".npz")


def save(path, features):
    """Features with their FID statistics (`mu`, `sigma`), written atomically."""
    mu, sigma = metrics.statistics(features)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, features=features, mu=mu, sigma=sigma)
    os.replace(tmp, path)


def features(extractor, images, path):
    """extractor(images)[0], read from `path` when it is there, else computed and saved there
    (`path` None: always computed)."""
    if path is not None and os.path.exists(path):
        with np.load(path) as f:
            cached = f["features"]
        if len(cached) == len(images):
            return cached
    computed, _ = extractor(images)
    if path is not None:
        save(path, computed)
    return computed


def load_statistics(path):
    """(mu, sigma) from a statistics file (this module's, or pytorch-fid's `mu`/`sigma` .npz)."""
    with np.load(path) as f:
        if "mu" not in f.files or "sigma" not in f.files:
            raise ValueError(f"{path} holds {f.files}, not FID statistics (`mu` and `sigma`)")
        return f["mu"], f["sigma"]
