"""FID between two folders of images: python -m mmgen_jax.fid DIR_A DIR_B [--json]

Each argument is a folder (searched recursively for .png .jpg .jpeg .bmp .webp .tif .tiff)
or a statistics file (.npz with `mu` and `sigma`: one that `--save_stats` wrote, a cached split
from `evaluation/feature_cache.py`, or pytorch-fid's). Images are read as RGB uint8, resized
to 299x299 by the protocol in `evaluation/inception.py` (printed with the result) and read by
the FID Inception-v3 from the converted weights (`python -m mmgen_jax.convert_inception`).
The Fréchet distance is `metrics.frechet_distance` (from the statistics when a side is a
file). With `--json` the last line is {"fid": ..., "n_a": ..., "n_b": ...} (n is null for a
statistics file).
"""

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmgen_jax.evaluation import feature_cache, metrics

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def image_paths(folder):
    """Image files below `folder`, sorted; a clear error when there are none."""
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(EXTENSIONS)
    )
    if not paths:
        raise ValueError(f"no images ({' '.join(EXTENSIONS)}) in {folder}")
    return paths


def read_rgb(path):
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image ({e}); remove it or fix it") from None


def folder_features(extractor, folder, chunk=256):
    """Features of every image in `folder`, read `chunk` files at a time (bounded memory)."""
    paths = image_paths(folder)
    parts = []
    for start in range(0, len(paths), chunk):
        parts.append(extractor([read_rgb(p) for p in paths[start : start + chunk]])[0])
    return np.concatenate(parts)


def features_or_statistics(extractor_factory, source, save_to=None):
    """A folder's features (N, 2048), or (mu, sigma) from a statistics file."""
    if os.path.isfile(source) and source.endswith(".npz"):
        return feature_cache.load_statistics(source)
    if not os.path.isdir(source):
        raise FileNotFoundError(f"{source} is neither a folder of images nor a .npz of statistics")
    features = folder_features(extractor_factory(), source)
    if save_to:
        feature_cache.save(save_to, features)
    return features


def fid_of(a, b):
    """FID of two feature sets, or of statistics (mu, sigma) on either side."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return metrics.frechet_distance(a, b)  # fast when a set is smaller than 2048
    stats = [metrics.statistics(s) if isinstance(s, np.ndarray) else s for s in (a, b)]
    if stats[0][0].shape != stats[1][0].shape:
        raise ValueError(f"statistics of dimensions {stats[0][0].shape} and {stats[1][0].shape}")
    return metrics.frechet_distance_from_stats(*stats[0], *stats[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="folder of images or statistics .npz")
    parser.add_argument("b", help="folder of images or statistics .npz")
    parser.add_argument("--weights", default="", help="converted Inception weights (.npz)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per device call")
    parser.add_argument("--save_stats", default="", help="write A's features and statistics here")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)

    from mmgen_jax.evaluation import inception  # JAX: only once the arguments are fine

    made = []

    def extractor():
        if not made:
            made.append(inception.InceptionFeatures(args.weights, args.batch_size))
        return made[0]

    try:
        a = features_or_statistics(extractor, args.a, args.save_stats)
        b = features_or_statistics(extractor, args.b)
        fid = fid_of(a, b)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"FATAL: {e}") from None
    n_a, n_b = (len(s) if isinstance(s, np.ndarray) else None for s in (a, b))
    print(f"FID {fid:.4f}  (A: {n_a or 'statistics'} images, B: {n_b or 'statistics'} images)")
    print(f"resize: {inception.RESIZE_PROTOCOL}")
    if args.json:
        print(json.dumps({"fid": fid, "n_a": n_a, "n_b": n_b}))


if __name__ == "__main__":
    sys.exit(main())
