"""What `digits_captions` says, without reading it: its words, colours, caption grammar and
the one parser of its captions.

The grammar is `PATTERNS`: 29 sentence patterns (English and Chinese) with optional words and
synonyms, 113 wordings, 33,900 captions over the 300 (digit, fg, bg) combinations, none
longer than 61 UTF-8 bytes (data.max_text_len = 64 holds them uncut). `TRAIN_PATTERNS` (0-21,
the six 1.x `TEMPLATES` first) caption `train` and `test`; `HELD_OUT_PATTERNS` (22-28) only
the `PHRASING_SPLIT`. The TFDS builder (`digits_captions.py`) writes captions with
`caption()`; evaluation reads them back with `parse_caption()`, a lookup in the table of
every caption (built once, ~0.1 s and ~7 MB). Neither this module nor its users import TFDS
or numpy.
"""

import functools
import itertools
import re

NAME = "digits_captions"  # the TFDS builder's name (DigitsCaptions)

PALETTE = (
    (0, 0, 0),
    (255, 255, 255),
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
)
COLOR_NAMES = ("black", "white", "red", "green", "blue", "yellow")
COLOR_NAMES_ZH = ("黑色", "白色", "红色", "绿色", "蓝色", "黄色")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_WORDS_ZH = ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九")
NUM_PAIRS = len(PALETTE) * (len(PALETTE) - 1)  # 30 ordered (fg, bg) pairs with fg != bg

# Attribute (the dataset's feature) -> its class names in class order.
ATTRIBUTES = {"label": DIGIT_WORDS, "fg": COLOR_NAMES, "bg": COLOR_NAMES}

# Fields: {fg}/{bg} colour names, {word} digit word, {num} the numeral, and the
# Chinese {fg_zh}/{bg_zh}/{word_zh}. Every template states digit, fg and bg. These six
# were the 1.x dataset's only captions; they are patterns 0-5 of the grammar below and
# template 0 is the canonical caption.
TEMPLATES = (
    "a {fg} handwritten {word} on a {bg} background",
    "the digit {num} in {fg} over {bg}",
    "a handwritten {word} in {fg} on {bg}",
    "the number {word}, written in {fg} on a {bg} background",
    "{bg_zh}背景上的{fg_zh}手写数字{word_zh}",
    "在{bg_zh}底色上用{fg_zh}写的数字{word_zh}",
)

# The caption grammar: whole sentence patterns, each stating digit, fg and bg, in the fields
# above. "[a|b]" writes one of its alternatives and "[a|]" an optional word, so a pattern
# has several wordings (`variants`); synonyms are only ones that stay true of the image
# (numeral/figure/digit; backdrop/ground/background; 背景/底色).
# Patterns 6-21: more train phrasings (6-16 English, 17-21 Chinese).
_MORE_TRAIN_PATTERNS = (
    "[a|the] {fg} [digit|numeral|figure] {num} on [a|the] {bg} [background|backdrop]",  # 6
    "[a|the] [digit|number] {word} drawn in {fg} against [a|the] {bg} [background|backdrop]",
    "{fg} [{word}|{num}] on {bg}",  # 8
    "[handwritten |]{word} in {fg} on a {bg} [ground|backdrop|background]",
    "{bg} background with a {fg} [handwritten |]{word}",  # 10
    "{fg} ink on {bg}: the [digit|numeral] {num}",
    "on a {bg} [background|backdrop], the [digit|number] {word} in {fg}",  # 12
    "[handwritten |]{word} ({num}) in {fg} on {bg}",
    "a {fg}-on-{bg} [{word}|{num}]",  # 14
    "the [figure|numeral] {word}, {fg} on a {bg} [ground|background]",
    "{fg} [digit|figure] {num} [over|against] {bg}",  # 16
    "{fg_zh}的[数字|手写数字]{word_zh}，背景是{bg_zh}",
    "{bg_zh}[背景|底色]上[有|写着]一个{fg_zh}的[{word_zh}|{num}]",  # 18
    "用{fg_zh}在{bg_zh}[背景|底色]上写的[{word_zh}|{num}]",
    "[手写|]数字{num}，{fg_zh}字，{bg_zh}底",  # 20
    "{fg_zh}手写的{word_zh}，{bg_zh}[背景|底色]",
)
# Patterns 22-28: held out of `train` (22-26 English, 27-28 Chinese), written only in the
# PHRASING_SPLIT, to measure whether a model follows wordings it never trained on. They
# reuse the train phrasings' words in new orders and sentence shapes.
_HELD_OUT_PATTERNS = (
    "a {word} in {fg} on {bg}",  # 22
    "{num} in {fg}, {bg} [background|backdrop]",
    "a {bg} [background|backdrop] with the [digit|number] {word} in {fg}",  # 24
    "[the|a] {fg} {word} against {bg}",
    "{word}, drawn in {fg} over a {bg} [ground|background]",  # 26
    "[一个|]{fg_zh}的[{word_zh}|{num}]在{bg_zh}[背景|底色]上",
    "背景{bg_zh}，[数字|手写数字]{word_zh}为{fg_zh}",  # 28
)
PATTERNS = TEMPLATES + _MORE_TRAIN_PATTERNS + _HELD_OUT_PATTERNS
TRAIN_PATTERNS = tuple(range(len(TEMPLATES) + len(_MORE_TRAIN_PATTERNS)))
HELD_OUT_PATTERNS = tuple(range(len(TRAIN_PATTERNS), len(PATTERNS)))
PHRASING_SPLIT = "test_phrasings"  # the test images and pairs, in held-out patterns only
_CHOICE = re.compile(r"\[([^\[\]]*)\]")  # "[a|b|]": one alternative (maybe empty)


def pair_index(fg: int, bg: int) -> int:
    """Numbers the 30 ordered (fg, bg) pairs with fg != bg as 0..29."""
    if fg == bg:
        raise ValueError(f"fg and bg must differ, got {fg} twice.")
    return fg * 5 + (bg if bg < fg else bg - 1)


def pair_from_index(index: int) -> tuple[int, int]:
    """Inverse of `pair_index`."""
    fg, rest = divmod(index, 5)
    return fg, (rest if rest < fg else rest + 1)


def is_held_out(digit: int, fg: int, bg: int) -> bool:
    """Whether (digit, fg, bg) never appears in the train split."""
    return pair_index(fg, bg) % 10 == digit


@functools.cache
def variants(pattern: int) -> tuple[str, ...]:
    """Every wording of pattern number `pattern` (one per choice of its alternatives), as
    format strings with the attribute fields left in, in a fixed order."""
    parts = _CHOICE.split(PATTERNS[pattern])  # literal, choice, literal, choice, ...
    options = [part.split("|") if i % 2 else [part] for i, part in enumerate(parts)]
    return tuple("".join(words) for words in itertools.product(*options))


def _fields(digit: int, fg: int, bg: int) -> dict[str, object]:
    return {
        "fg": COLOR_NAMES[fg],
        "bg": COLOR_NAMES[bg],
        "word": DIGIT_WORDS[digit],
        "num": digit,
        "fg_zh": COLOR_NAMES_ZH[fg],
        "bg_zh": COLOR_NAMES_ZH[bg],
        "word_zh": DIGIT_WORDS_ZH[digit],
    }


def caption(pattern: int, digit: int, fg: int, bg: int, variant: int = 0) -> str:
    """The caption of `digit` in colour `fg` on `bg`, in wording `variant` of pattern number
    `pattern` (patterns 0-5 are the `TEMPLATES`, which have one wording each)."""
    return variants(pattern)[variant].format(**_fields(digit, fg, bg))


def canonical_caption(digit: int, fg: int, bg: int) -> str:
    """Template 0, e.g. 'a red handwritten seven on a blue background'."""
    return caption(0, digit, fg, bg)


@functools.cache
def _caption_table() -> dict[str, tuple[int, int, int, int]]:
    """Every caption the grammar can write -> its (pattern, digit, fg, bg). A text that two
    patterns or two meanings could write is a grammar error: a parse must be one answer."""
    table = {}
    for digit, pair in itertools.product(range(len(DIGIT_WORDS)), range(NUM_PAIRS)):
        fields = _fields(digit, *pair_from_index(pair))
        meaning = (digit, *pair_from_index(pair))
        for pattern in range(len(PATTERNS)):
            for wording in variants(pattern):
                text = wording.format(**fields)
                if text in table:
                    raise ValueError(f"patterns {table[text][0]} and {pattern} both write {text!r}")
                table[text] = (pattern, *meaning)
    return table


def _lookup(text) -> tuple[int, int, int, int] | None:
    return _caption_table().get(text.strip()) if isinstance(text, str) else None


def parse_caption(text: str) -> dict[str, int] | None:
    """{"label", "fg", "bg"} class ids stated by `text`, or None when `text` (stripped) is no
    caption the grammar writes: another phrasing, an unknown word, or one colour on itself
    (the builder never draws fg == bg). Exactly the grammar's captions parse (held-out
    patterns included), so a generated caption parses iff it is well formed."""
    found = _lookup(text)
    return None if found is None else dict(zip(ATTRIBUTES, found[1:]))


def pattern_of(text: str) -> int | None:
    """The number of the pattern that writes `text`, or None when no pattern does."""
    found = _lookup(text)
    return None if found is None else found[0]
