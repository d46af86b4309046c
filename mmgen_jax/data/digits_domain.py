"""What `digits_captions` says, without reading it: its words, colours, caption templates and
the one parser of its captions.

The TFDS builder (`digits_captions.py`) writes captions with `caption()`; evaluation reads
them back with `parse_caption()`. Neither this module nor its users import TFDS.
"""

import functools

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
# Chinese {fg_zh}/{bg_zh}/{word_zh}. Every template states digit, fg and bg.
TEMPLATES = (
    "a {fg} handwritten {word} on a {bg} background",
    "the digit {num} in {fg} over {bg}",
    "a handwritten {word} in {fg} on {bg}",
    "the number {word}, written in {fg} on a {bg} background",
    "{bg_zh}背景上的{fg_zh}手写数字{word_zh}",
    "在{bg_zh}底色上用{fg_zh}写的数字{word_zh}",
)


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


def caption(template: int, digit: int, fg: int, bg: int) -> str:
    """The caption of `digit` in colour `fg` on `bg`, in template number `template`."""
    return TEMPLATES[template].format(
        fg=COLOR_NAMES[fg],
        bg=COLOR_NAMES[bg],
        word=DIGIT_WORDS[digit],
        num=digit,
        fg_zh=COLOR_NAMES_ZH[fg],
        bg_zh=COLOR_NAMES_ZH[bg],
        word_zh=DIGIT_WORDS_ZH[digit],
    )


def canonical_caption(digit: int, fg: int, bg: int) -> str:
    """Template 0, e.g. 'a red handwritten seven on a blue background'."""
    return caption(0, digit, fg, bg)


@functools.cache
def _caption_table() -> dict[str, tuple[int, int, int]]:
    """Every caption the builder can write -> its (digit, fg, bg): 6 x 10 x 30 entries."""
    return {
        caption(template, digit, *pair_from_index(pair)): (digit, *pair_from_index(pair))
        for template in range(len(TEMPLATES))
        for digit in range(len(DIGIT_WORDS))
        for pair in range(NUM_PAIRS)
    }


def parse_caption(text: str) -> dict[str, int] | None:
    """{"label", "fg", "bg"} class ids stated by `text`, or None when `text` (stripped) is no
    caption the dataset writes: another phrasing, an unknown word, or one colour on itself
    (the builder never draws fg == bg). Exactly the builder's own captions parse, so a
    generated caption parses iff it is well formed."""
    found = _caption_table().get(text.strip()) if isinstance(text, str) else None
    if found is None:
        return None
    return dict(zip(ATTRIBUTES, found))
