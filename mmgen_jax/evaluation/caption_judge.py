"""Scores generated captions of digits_captions images: do they name the right digit and
the right foreground and background colours?

  python -m mmgen_jax.evaluation.caption_judge --samples_dir=DIR
reads DIR/index.jsonl as `python -m mmgen_jax.sample --mode=image2text` writes it for the
eval split ({"caption": generated, "reference": the image's true caption}) and prints the
share of captions that are well formed (any of the dataset's six templates, English or
Chinese), name the right digit, and name both right colours. A caption that matches no
template names nothing and counts as wrong.
"""

import functools
import json
import os

from absl import flags

from mmgen_jax import app
from mmgen_jax.data import digits_captions as dc

FLAGS = app.flag_values(devices=False)
flags.DEFINE_string(
    "samples_dir", None, "Folder with index.jsonl from image2text.", flag_values=FLAGS
)
flags.mark_flag_as_required("samples_dir", flag_values=FLAGS)


@functools.lru_cache(maxsize=1)
def _captions():
    """Every caption the dataset can write -> its (digit, fg, bg)."""
    table = {}
    for template in range(len(dc.TEMPLATES)):
        for digit in range(len(dc.DIGIT_WORDS)):
            for pair in range(dc.NUM_PAIRS):
                fg, bg = dc.pair_from_index(pair)
                table[dc.caption(template, digit, fg, bg)] = (digit, fg, bg)
    return table


def parse_caption(caption):
    """(digit, fg, bg) named by a caption in any of the dataset's templates, or None."""
    return _captions().get(caption.strip())


def score(captions, references):
    """Shares of `captions` that are well formed, name the reference's digit, and name both
    of its colours (references: the true captions, parsed the same way)."""
    if len(captions) != len(references) or not captions:
        raise ValueError("score needs as many generated captions as references, and some")
    truth = [parse_caption(r) for r in references]
    if None in truth:
        bad = references[truth.index(None)]
        raise ValueError(f"reference {bad!r} is not a digits_captions caption")
    got = [parse_caption(c) for c in captions]
    n = len(captions)
    return {
        "n": n,
        "well_formed": sum(g is not None for g in got) / n,
        "digit": sum(g is not None and g[0] == t[0] for g, t in zip(got, truth)) / n,
        "colours": sum(g is not None and g[1:] == t[1:] for g, t in zip(got, truth)) / n,
    }


def main(argv):
    del argv
    path = os.path.join(FLAGS.samples_dir, "index.jsonl")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if not rows or any("reference" not in r for r in rows):
        raise app.UsageError(
            f"{path} needs a 'reference' caption on every line: write it with "
            f"`python -m mmgen_jax.sample --mode=image2text` over the eval split"
        )
    print(json.dumps(score([r["caption"] for r in rows], [r["reference"] for r in rows])))


if __name__ == "__main__":
    app.run(main, FLAGS)
