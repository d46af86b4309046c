"""Scores generated captions of a dataset's images: do they state the image's attributes
(for digits_captions: its digit, foreground and background colour)?

  python -m mmgen_jax.evaluation.caption_judge --samples_dir=DIR [--dataset=NAME]
reads DIR/index.jsonl as `python -m mmgen_jax.sample --mode=image2text` writes it for the
eval split ({"caption": generated, "reference": the image's true caption}) and prints the
share of captions that are well formed (a caption the dataset writes, in any of its
patterns and languages), that state each attribute right, and that state all of them
right. Captions are read by the dataset's domain (`mmgen_jax.data.domains`); one that does
not parse states nothing and counts as wrong.
"""

import json
import os

from absl import flags

from mmgen_jax import app
from mmgen_jax.data import digits_domain, domains
from mmgen_jax.evaluation import captions as captions_lib

FLAGS = app.flag_values(devices=False)
flags.DEFINE_string(
    "samples_dir", None, "Folder with index.jsonl from image2text.", flag_values=FLAGS
)
flags.DEFINE_string(
    "dataset", digits_domain.NAME, "The dataset the captions describe.", flag_values=FLAGS
)
flags.mark_flag_as_required("samples_dir", flag_values=FLAGS)


def domain_of(dataset_name):
    """The domain of `dataset_name` if it can read its captions; else a clear ValueError."""
    domain = domains.domain_for(dataset_name)
    if domain is None or not domain.can_parse_captions:
        raise ValueError(
            f"dataset {dataset_name!r} declares no caption parser, so its captions cannot be "
            f"judged: register a Domain with parse_caption in mmgen_jax/data/domains.py"
        )
    return domain


def score(captions, references, domain):
    """Shares of `captions` that are well formed, state each of the domain's attributes as
    the reference does, and state all of them (references: the true captions, parsed the
    same way)."""
    if len(captions) != len(references) or not captions:
        raise ValueError("score needs as many generated captions as references, and some")
    truth = [domain.parse_caption(r) for r in references]
    if None in truth:
        bad = references[truth.index(None)]
        raise ValueError(f"reference {bad!r} is not a {domain.name} caption")
    got = [domain.parse_caption(c) for c in captions]
    targets = {a: [t[a] for t in truth] for a in domain.attributes}
    shares = captions_lib.stated_shares(got, targets)
    return {
        "n": len(captions),
        "well_formed": shares.pop("parsed"),
        **shares,
        "all": sum(g == t for g, t in zip(got, truth)) / len(captions),
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
    try:
        domain = domain_of(FLAGS.dataset)
        result = score([r["caption"] for r in rows], [r["reference"] for r in rows], domain)
    except ValueError as e:  # no parser for the dataset, or a reference of another dataset
        raise app.UsageError(str(e)) from e
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main, FLAGS)
