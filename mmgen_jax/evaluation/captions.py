"""Reading generated captions: attributes from digits_captions text, and BLEU-4.

Used for image->text (a VAE describing images) and joint generation, where the attributes a
caption states are compared with the image or with the reference.
"""

import collections
import functools
import math
import re

from mmgen_jax.data.digits_captions import (
    COLOR_NAMES,
    COLOR_NAMES_ZH,
    DIGIT_WORDS,
    DIGIT_WORDS_ZH,
    TEMPLATES,
)

# Template field -> (dataset feature it states, its words in class order).
_FIELDS = {
    "fg": ("fg", COLOR_NAMES),
    "bg": ("bg", COLOR_NAMES),
    "word": ("label", DIGIT_WORDS),
    "num": ("label", tuple("0123456789")),
    "fg_zh": ("fg", COLOR_NAMES_ZH),
    "bg_zh": ("bg", COLOR_NAMES_ZH),
    "word_zh": ("label", DIGIT_WORDS_ZH),
}


@functools.cache
def _template_patterns():
    """One regex per caption template, each field an alternation of its words."""
    patterns = []
    for template in TEMPLATES:
        parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
        regex = "".join(
            re.escape(part)
            if i % 2 == 0
            else f"(?P<{part}>{'|'.join(map(re.escape, _FIELDS[part][1]))})"
            for i, part in enumerate(parts)
        )
        patterns.append(re.compile(rf"^\s*{regex}\s*$"))
    return patterns


def parse_attributes(text):
    """{"label", "fg", "bg"} class ids stated by a digits_captions caption in any of its
    templates (English or Chinese), or None when the text follows none of them."""
    for pattern in _template_patterns():
        match = pattern.match(text)
        if match:
            return {
                _FIELDS[field][0]: _FIELDS[field][1].index(word)
                for field, word in match.groupdict().items()
            }
    return None


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
