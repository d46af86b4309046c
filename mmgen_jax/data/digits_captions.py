"""`digits_captions`: coloured handwritten digits with English and Chinese captions.

A small, offline image-caption dataset for tests, smoke runs and quick
experiments on text-conditional generation. It is built from scikit-learn's
bundled `load_digits()` (1,797 greyscale 8x8 digits, values 0..16), so preparing
it needs no network and takes seconds.

Rendering (`render`): intensity a = value / 16 is upsampled bilinearly from 8x8
to 32x32 (half-pixel centres, edge clamp; the explicit numpy version below,
equal to PIL's BILINEAR resize of a mode 'F' image), then every pixel is
round(a * fg + (1 - a) * bg) in RGB, so strokes are drawn in the foreground
colour on a plain background colour.

Colours: a fixed 6-colour `PALETTE`; the colour id is the index. Words, colours, the
caption grammar and the caption parser live in `digits_domain` (no TFDS there). The 30
ordered (fg, bg) pairs with fg != bg are numbered by
    pair_index = fg * 5 + (bg if bg < fg else bg - 1)        (0..29).
Every digit image appears K = 6 times, with 6 distinct pairs drawn by a numpy RNG
seeded with [1234, image_id], and one caption each.

Captions (`example_caption`): the sentence pattern rotates with (image_id + slot) over the
split's patterns, so every pattern is used equally often; the pattern's wording (its
optional words and synonyms) is drawn by a numpy RNG seeded with [4321, image_id, slot].

Splits, the compositional hold-out and the phrasing hold-out:
  * images with image_id % 6 == 0 are test images (300), the others train
    images (1,497);
  * the combination (digit, fg, bg) is held out iff pair_index % 10 == digit:
    3 colour pairs per digit, 30 of the 300 combinations (`is_held_out`);
  * the sentence patterns `HELD_OUT_PATTERNS` (7 of 29, English and Chinese) are held out;
  * train = train images x their pairs, minus held-out combinations, in train patterns;
  * test  = test images x their pairs, seen and held-out combinations alike,
    flagged by the `held_out` feature, in train patterns. A model that draws "a red seven
    on blue" correctly on test, never having seen that combination, composes;
  * test_phrasings = the same examples as test (images, pairs, `held_out` flags; stored in
    another order, since TFDS shuffles each split by its name), captioned in held-out
    patterns only: a model that draws them right follows wordings it never trained on.

Prepare with `python -m mmgen_jax.data.prepare --dataset=digits_captions`, or let
the input pipeline do it on first use.
"""

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

# The dataset's words, colours, templates and captions: shared with evaluation, without TFDS.
from mmgen_jax.data.digits_domain import (
    COLOR_NAMES,
    DIGIT_WORDS,
    HELD_OUT_PATTERNS,
    NUM_PAIRS,
    PALETTE,
    PHRASING_SPLIT,
    TRAIN_PATTERNS,
    caption,
    is_held_out,
    pair_from_index,
    variants,
)

IMAGE_SIZE = 32
PAIRS_PER_IMAGE = 6  # K
TEST_IMAGE_EVERY = 6  # image_id % 6 == 0 -> test image


def image_pairs(image_id: int) -> list[tuple[int, int]]:
    """The K distinct (fg, bg) pairs that image `image_id` is drawn with.

    A generator per image (not one shared stream) keeps an image's pairs
    independent of generation order and of every other image.
    """
    rng = np.random.default_rng([1234, image_id])
    chosen = rng.choice(NUM_PAIRS, size=PAIRS_PER_IMAGE, replace=False)
    return [pair_from_index(int(p)) for p in chosen]


def example_caption(image_id: int, slot: int, digit: int, fg: int, bg: int, patterns) -> str:
    """The caption of pair number `slot` of image `image_id`, in one of `patterns`: the
    pattern rotates with image_id + slot (each used equally often), its wording is drawn by
    an RNG of this example alone (independent of the split's other examples)."""
    pattern = patterns[(image_id + slot) % len(patterns)]
    rng = np.random.default_rng([4321, image_id, slot])
    return caption(pattern, digit, fg, bg, int(rng.integers(len(variants(pattern)))))


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights, half-pixel centres, clamped.

    Output pixel i samples input coordinate (i + 0.5) * n_in / n_out - 0.5; the
    coordinate is clamped to [0, n_in - 1], i.e. edge pixels are replicated.
    """
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = x - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


def upsample(intensity: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Bilinear (separable) resize of a 2-D float array to (size, size)."""
    rows = _bilinear_matrix(intensity.shape[0], size)
    cols = _bilinear_matrix(intensity.shape[1], size)
    return rows @ intensity @ cols.T


def render(digit_image: np.ndarray, fg: int, bg: int) -> np.ndarray:
    """An 8x8 image of values 0..16 -> (32, 32, 3) uint8 in colours fg on bg."""
    a = upsample(np.asarray(digit_image, np.float64) / 16.0)[..., None]
    rgb = a * np.array(PALETTE[fg]) + (1 - a) * np.array(PALETTE[bg])
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


class DigitsCaptions(tfds.core.GeneratorBasedBuilder):
    """Coloured 32x32 handwritten digits with captions (see module docstring)."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "2.0.0": "A caption grammar: 29 sentence patterns (English and Chinese, optional "
        "words, numerals and number words, synonyms); 22 caption train and test, 7 are held "
        "out of train and caption only the new split test_phrasings (the test examples "
        "again). Same images, pairs and held_out flags; train and test captions change.",
        "1.1.0": "Images stored as raw uint8 pixels (faster reads); same examples.",
        "1.0.0": "Initial release: 6 colour pairs per image, 6 caption "
        "templates (4 English, 2 Chinese), compositional hold-out.",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    # Raw pixels, not PNG: 3 KiB each, and reading skips the decoder, which
                    # took ~40% of the input pipeline's time.
                    "image": tfds.features.Tensor(
                        shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8
                    ),
                    "caption": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(DIGIT_WORDS)),
                    "fg": tfds.features.ClassLabel(names=list(COLOR_NAMES)),
                    "bg": tfds.features.ClassLabel(names=list(COLOR_NAMES)),
                    "held_out": tfds.features.Scalar(
                        dtype=np.bool_, doc="(digit, fg, bg) is a combination absent from train."
                    ),
                    "image_id": tfds.features.Scalar(
                        dtype=np.int32, doc="Index into sklearn load_digits()."
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the digits ship with scikit-learn.
        # Imported here: only preparation needs scikit-learn, not readers of the
        # constants above.
        from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

        digits = load_digits()
        return {
            split: self._generate_examples(digits.images, digits.target, split)
            for split in ("train", "test", PHRASING_SPLIT)
        }

    def _generate_examples(self, images, targets, split: str):
        test = split != "train"
        patterns = HELD_OUT_PATTERNS if split == PHRASING_SPLIT else TRAIN_PATTERNS
        for image_id, (image, digit) in enumerate(zip(images, targets)):
            if (image_id % TEST_IMAGE_EVERY == 0) != test:
                continue
            digit = int(digit)
            for slot, (fg, bg) in enumerate(image_pairs(image_id)):
                held_out = is_held_out(digit, fg, bg)
                if held_out and not test:
                    continue
                # A PIL image is PNG-encoded by PIL itself, not by TensorFlow.
                yield (
                    f"{image_id:04d}_{fg}_{bg}",
                    {
                        "image": Image.fromarray(render(image, fg, bg)),
                        "caption": example_caption(image_id, slot, digit, fg, bg, patterns),
                        "label": digit,
                        "fg": fg,
                        "bg": bg,
                        "held_out": held_out,
                        "image_id": image_id,
                    },
                )
