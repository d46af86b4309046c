"""What evaluation and sampling may know about a dataset without reading it: its attributes,
the one parser of its captions, its words and colours. One `Domain` per dataset that has such
facts, looked up by the dataset's name with `domain_for`; callers ask the domain what it can
do (`can_parse_captions`, `drawn_digits`) instead of naming datasets.

Nothing here imports TFDS: a domain's facts live in a module of their own (e.g.
`digits_domain`) that the dataset's TFDS builder imports to write its examples.
"""

import dataclasses
from collections.abc import Callable, Mapping

from mmgen_jax.data import digits_domain, prepare


@dataclasses.dataclass(frozen=True)
class Domain:
    """A dataset's facts.

    attributes: attribute (a stored integer feature, e.g. "label") -> its class names, in
        class order; the number of classes is their count.
    words: language -> attribute -> the words its captions use for each class.
    parse_caption: text -> {attribute: class id} it states, or None when the text is no
        caption of this dataset; None when the dataset's captions state no attributes.
    palette: RGB of each colour class, for attributes that are colours; else None.
    drawn_digits: images are scikit-learn's 8x8 digits (`label`) drawn in `palette` colours,
        `fg` on `bg`, which `evaluation.attribute_judge` reads from pixels alone.
    phrasing_split: a split of test examples captioned only in sentence patterns held out of
        train (`consistency_phrasing_held_out`), or None; versions prepared before it existed
        lack it.
    """

    name: str
    attributes: Mapping[str, tuple[str, ...]]
    words: Mapping[str, Mapping[str, tuple[str, ...]]]
    parse_caption: Callable[[str], dict[str, int] | None] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    drawn_digits: bool = False
    phrasing_split: str | None = None

    @property
    def can_parse_captions(self) -> bool:
        return self.parse_caption is not None

    def num_classes(self, attribute: str) -> int:
        return len(self.attributes[attribute])


DIGITS = Domain(
    name=digits_domain.NAME,
    attributes=digits_domain.ATTRIBUTES,
    words={
        "en": digits_domain.ATTRIBUTES,
        "zh": {
            "label": digits_domain.DIGIT_WORDS_ZH,
            "fg": digits_domain.COLOR_NAMES_ZH,
            "bg": digits_domain.COLOR_NAMES_ZH,
        },
    },
    parse_caption=digits_domain.parse_caption,
    palette=digits_domain.PALETTE,
    drawn_digits=True,
    phrasing_split=digits_domain.PHRASING_SPLIT,
)

_DOMAINS = {d.name: d for d in (DIGITS,)}


def domain_for(dataset_name: str) -> Domain | None:
    """The domain of `dataset_name` (any version or config of it, e.g. 'digits_captions:1.1.0'),
    or None for a dataset without one (its captions state nothing evaluation can check)."""
    return _DOMAINS.get(prepare.builder_name(dataset_name))
