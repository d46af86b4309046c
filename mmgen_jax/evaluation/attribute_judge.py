"""An independent judge of digits_captions-style images: digit, foreground, background.

It shares nothing with the generative models: colours are read from pixel statistics
(the background is the border's median colour, the foreground the mean colour of the
pixels farthest from it, each snapped to the nearest palette colour) and the digit by a
scikit-learn SVM trained on the bundled 8x8 digits, applied to the image's stroke
intensity pooled to 8x8.

  python -m mmgen_jax.evaluation.attribute_judge --samples_dir=DIR
reads DIR/index.jsonl (as written by `mmgen_jax.sample`), parses the captions of the form
"a {fg} handwritten {digit} on a {bg} background" and prints the share of images whose
digit, fg and bg match their caption.
"""

import functools
import json
import os
import re

import numpy as np
from absl import flags
from PIL import Image

from mmgen_jax import app
from mmgen_jax.data.digits_captions import COLOR_NAMES, DIGIT_WORDS, PALETTE

FLAGS = app.flag_values(devices=False)
flags.DEFINE_string("samples_dir", None, "Folder with index.jsonl and the PNGs.", flag_values=FLAGS)
flags.mark_flag_as_required("samples_dir", flag_values=FLAGS)

_PALETTE = np.asarray(PALETTE, np.float32)
_CAPTION = re.compile(r"^a (\w+) handwritten (\w+) on a (\w+) background$")


@functools.lru_cache(maxsize=1)
def _digit_classifier():
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    return SVC(gamma=0.001, C=10.0).fit(digits.data / 16.0, digits.target)


def _nearest_colour(rgb):
    return int(np.argmin(((_PALETTE - rgb) ** 2).sum(-1)))


def judge(images):
    """uint8 images (N, H, W, 3), H and W multiples of 8 -> dict of int arrays digit, fg, bg."""
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
        "digit": _digit_classifier().predict(a).astype(np.int32),
        "fg": np.array([_nearest_colour(c) for c in fg_rgb], np.int32),
        "bg": np.array([_nearest_colour(c) for c in bg_rgb], np.int32),
    }


def parse_caption(caption):
    """(digit, fg, bg) of a template-0 caption, or None."""
    m = _CAPTION.match(caption.strip())
    if not m or m[1] not in COLOR_NAMES or m[2] not in DIGIT_WORDS or m[3] not in COLOR_NAMES:
        return None
    return DIGIT_WORDS.index(m[2]), COLOR_NAMES.index(m[1]), COLOR_NAMES.index(m[3])


def score(images, targets):
    """Accuracy of each attribute (and all three at once) against (digit, fg, bg) targets."""
    got = judge(images)
    targets = np.asarray(targets)
    right = {k: got[k] == targets[:, i] for i, k in enumerate(("digit", "fg", "bg"))}
    right["all"] = right["digit"] & right["fg"] & right["bg"]
    return {k: float(v.mean()) for k, v in right.items()}


def main(argv):
    del argv
    folder = FLAGS.samples_dir
    with open(os.path.join(folder, "index.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    parsed = [(r, parse_caption(r["caption"])) for r in rows]
    parsed = [(r, t) for r, t in parsed if t is not None]
    if not parsed:
        raise app.UsageError(
            f"no caption in {folder}/index.jsonl has the form "
            f"'a {{fg}} handwritten {{digit}} on a {{bg}} background'"
        )
    images = np.stack(
        [np.asarray(Image.open(os.path.join(folder, r["file"])).convert("RGB")) for r, _ in parsed]
    )
    result = score(images, [t for _, t in parsed])
    print(json.dumps({"n": len(parsed), **result}))


if __name__ == "__main__":
    app.run(main, FLAGS)
