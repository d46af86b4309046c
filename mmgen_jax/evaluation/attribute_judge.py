"""An independent judge of images of digits drawn in palette colours (digits_captions):
digit (`label`), foreground (`fg`), background (`bg`).

It shares nothing with the generative models or the domain evaluator: colours are read from
pixel statistics (the background is the border's median colour, the foreground the mean
colour of the pixels farthest from it, each snapped to the nearest colour of the domain's
palette) and the digit by a scikit-learn SVM trained on the bundled 8x8 digits, applied to
the image's stroke intensity pooled to 8x8. It reads any dataset whose domain declares
`drawn_digits` (`mmgen_jax.data.domains`).

  python -m mmgen_jax.evaluation.attribute_judge --samples_dir=DIR [--dataset=NAME]
reads DIR/index.jsonl (as written by `mmgen_jax.sample`), parses the captions with the
dataset's domain (any of its patterns, English or Chinese; other lines are skipped) and
prints the share of images whose digit, fg and bg (and all three) match their caption.
"""

import functools
import json
import os

import numpy as np
from absl import flags
from PIL import Image

from mmgen_jax import app
from mmgen_jax.data import digits_domain, domains

ATTRIBUTES = ("label", "fg", "bg")  # what a `drawn_digits` domain's images show

FLAGS = app.flag_values(devices=False)
flags.DEFINE_string("samples_dir", None, "Folder with index.jsonl and the PNGs.", flag_values=FLAGS)
flags.DEFINE_string(
    "dataset", digits_domain.NAME, "The dataset the images are drawn from.", flag_values=FLAGS
)
flags.mark_flag_as_required("samples_dir", flag_values=FLAGS)


@functools.lru_cache(maxsize=1)
def _digit_classifier():
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    return SVC(gamma=0.001, C=10.0).fit(digits.data / 16.0, digits.target)


def domain_of(dataset_name):
    """The domain of `dataset_name` if the judge can read its images; else a clear ValueError."""
    domain = domains.domain_for(dataset_name)
    if domain is None or not domain.drawn_digits:
        raise ValueError(
            f"the attribute judge reads digits drawn in palette colours, which dataset "
            f"{dataset_name!r} does not declare (Domain.drawn_digits in "
            f"mmgen_jax/data/domains.py); use the domain evaluator's consistency instead"
        )
    return domain


def _nearest_colour(rgb, palette):
    return int(np.argmin(((palette - rgb) ** 2).sum(-1)))


def judge(images, domain):
    """uint8 images (N, H, W, 3), H and W multiples of 8, of a `drawn_digits` domain -> dict
    of int arrays label (the digit), fg, bg (indices into the domain's palette)."""
    palette = np.asarray(domain.palette, np.float32)
    images = np.asarray(images, np.float32)
    n, h, w, _ = images.shape
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1)
    bg_rgb = np.median(border, axis=1)  # (N, 3)
    dist = np.linalg.norm(images - bg_rgb[:, None, None], axis=-1).reshape(n, -1)
    far = dist >= np.quantile(dist, 0.9, axis=1, keepdims=True)
    flat = images.reshape(n, -1, 3)
    fg_rgb = (flat * far[..., None]).sum(1) / np.maximum(far.sum(1, keepdims=True), 1)
    # Stroke intensity: position of each pixel on the bg -> fg line, pooled to 8x8.
    axis = fg_rgb - bg_rgb
    a = ((flat - bg_rgb[:, None]) * axis[:, None]).sum(-1) / np.maximum(
        (axis**2).sum(-1, keepdims=True), 1e-6
    )
    a = np.clip(a, 0, 1).reshape(n, 8, h // 8, 8, w // 8).mean((2, 4)).reshape(n, 64)
    return {
        "label": _digit_classifier().predict(a).astype(np.int32),
        "fg": np.array([_nearest_colour(c, palette) for c in fg_rgb], np.int32),
        "bg": np.array([_nearest_colour(c, palette) for c in bg_rgb], np.int32),
    }


def score(images, targets, domain):
    """Accuracy of each attribute (and all three at once) against `targets`
    ({"label", "fg", "bg"}: the true class of each image)."""
    got = judge(images, domain)
    right = {k: got[k] == np.asarray(targets[k]) for k in ATTRIBUTES}
    right["all"] = np.logical_and.reduce([right[k] for k in ATTRIBUTES])
    return {k: float(v.mean()) for k, v in right.items()}


def main(argv):
    del argv
    folder = FLAGS.samples_dir
    try:
        domain = domain_of(FLAGS.dataset)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    with open(os.path.join(folder, "index.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    parsed = [(r, domain.parse_caption(r["caption"])) for r in rows]
    parsed = [(r, t) for r, t in parsed if t is not None]
    if not parsed:
        raise app.UsageError(
            f"no caption in {folder}/index.jsonl is a {domain.name} caption: sample from "
            f"captions the dataset writes (any of its caption patterns)"
        )
    images = np.stack(
        [np.asarray(Image.open(os.path.join(folder, r["file"])).convert("RGB")) for r, _ in parsed]
    )
    targets = {k: np.array([t[k] for _, t in parsed]) for k in ATTRIBUTES}
    print(json.dumps({"n": len(parsed), **score(images, targets, domain)}))


if __name__ == "__main__":
    app.run(main, FLAGS)
