"""Scoring generated captions: BLEU-4 against references, and the share stating each
attribute right.

Used for image->text (a VAE describing images). What a caption states is read by its
dataset's domain (`mmgen_jax.data.domains`), not here.
"""

import collections
import math
import re

import numpy as np


def tokenize(text):
    """Lower-cased words and punctuation marks; each CJK character is a word of its own."""
    return re.findall(r"[\u3400-\u9fff]|[^\W_]+|[^\w\s]", text.lower())


def _ngrams(tokens, n):
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu4(hypotheses, references):
    """Corpus BLEU-4 (Papineni et al., 2002), one reference per hypothesis, no smoothing:
    brevity penalty x geometric mean of the clipped 1- to 4-gram precisions over the corpus.
    0 when some n-gram order has no match."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(
            f"BLEU needs one reference per hypothesis, got {len(hypotheses)} hypotheses and "
            f"{len(references)} references"
        )
    matches, totals = [0] * 4, [0] * 4
    hyp_length = ref_length = 0
    for hypothesis, reference in zip(hypotheses, references):
        hyp, ref = tokenize(hypothesis), tokenize(reference)
        hyp_length, ref_length = hyp_length + len(hyp), ref_length + len(ref)
        for n in range(1, 5):
            counts, ref_counts = _ngrams(hyp, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(c, ref_counts[g]) for g, c in counts.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / max(hyp_length, 1))
    return brevity * math.exp(log_precision)


def stated_shares(stated, targets):
    """Shares of captions that parse (`parsed`) and that state each attribute right.

    stated: per caption, the {attribute: class} its domain parsed, or None (states nothing
        right); targets: {attribute: the true class of each caption's image}.
    """
    out = {"parsed": float(np.mean([s is not None for s in stated]))}
    for attribute, truth in targets.items():
        said = np.array([-1 if s is None else s.get(attribute, -1) for s in stated])
        out[attribute] = float(np.mean(said == np.asarray(truth)))
    return out
