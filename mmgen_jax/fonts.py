"""Text in image grids, legible in any script the installed fonts cover.

Grid text is drawn with a chain of faces: a general sans face (DejaVu Sans where installed:
Latin, Greek, Cyrillic, Arabic, Hebrew...), then a CJK face for the characters it lacks
(found through fontconfig, or at the usual paths on Debian/Ubuntu, Fedora, macOS and
Windows). A character no face covers is drawn as the first face's missing-glyph box, and
the first such character in a process logs one warning that names the package to install.
"""

import functools
import logging
import os
import subprocess
import unicodedata

from PIL import ImageFont

log = logging.getLogger("mmgen_jax")

CJK_FONT_HINT = (
    "install a CJK font: on Debian/Ubuntu `apt-get install fonts-wqy-microhei` (small) or "
    "fonts-noto-cjk; macOS ships PingFang"
)
OTHER_FONT_HINT = "install more fonts: on Debian/Ubuntu `apt-get install fonts-noto-core`"

# Where CJK fonts live when fontconfig is absent (macOS, Windows) or finds none.
KNOWN_CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
)
KNOWN_SANS_FONTS = ("DejaVuSans.ttf", "/System/Library/Fonts/Helvetica.ttc", "arial.ttf")

_warned = set()  # kinds of missing glyphs already warned about in this process


def is_cjk(ch):
    """True for Han, kana, Hangul, CJK punctuation and full-width forms."""
    o = ord(ch)
    return (
        0x2E80 <= o <= 0x9FFF
        or 0xAC00 <= o <= 0xD7AF
        or 0xF900 <= o <= 0xFAFF
        or 0xFF00 <= o <= 0xFFEF
        or 0x20000 <= o <= 0x3FFFF
    )


def _fontconfig(*args):
    try:
        return subprocess.run(
            ["fc-list", *args], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""  # no fontconfig (macOS, Windows): the known paths serve


def find_cjk_font():
    """(path, face index) of an installed font with Chinese glyphs, or None."""
    candidates = []
    for line in _fontconfig(":lang=zh", "-f", "%{file}\t%{index}\t%{family}\t%{style}\n").split(
        "\n"
    ):
        parts = line.split("\t")
        if len(parts) == 4 and os.path.isfile(parts[0]):
            path, index, family, style = parts
            # A regular, proportional sans face, Simplified Chinese where there is a choice.
            rank = (
                "Mono" in family,
                "Serif" in family,
                not any(s in style for s in ("Regular", "Book", "Normal")),
                not any(s in family for s in (" SC", "CN", "GB")),
                path,
                int(index or 0),
            )
            candidates.append((rank, (path, int(index or 0))))
    candidates.sort()
    found = [face for _, face in candidates]
    found += [(path, 0) for path in KNOWN_CJK_FONTS if os.path.isfile(path)]
    for face in found:
        if ord("中") in _cmap(face):
            return face
    return None


def _find_sans_font():
    for name in KNOWN_SANS_FONTS:
        try:
            return (ImageFont.truetype(name, 12).path, 0)
        except OSError:
            continue
    match = _fontconfig(":lang=en:spacing=proportional", "-f", "%{file}\t%{index}\n")
    for line in match.split("\n"):
        path, _, index = line.partition("\t")
        if path.endswith((".ttf", ".otf", ".ttc")) and os.path.isfile(path):
            return (path, int(index or 0))
    return None


@functools.cache
def _cmap(face):
    """The code points `face` (path, index) has glyphs for."""
    from fontTools.ttLib import TTFont

    try:
        return frozenset(TTFont(face[0], fontNumber=face[1], lazy=True).getBestCmap())
    except Exception:  # noqa: BLE001 - an unreadable font file is one we do not use
        return frozenset()


@functools.cache
def faces():
    """The (path, index) faces grid text is drawn with, in order of preference."""
    chain = [face for face in (_find_sans_font(), find_cjk_font()) if face is not None]
    return tuple(dict.fromkeys(chain))


@functools.cache
def fonts(size):
    """[(font, code points it covers or None for 'only ASCII')] at `size` pixels."""
    chain = [
        (ImageFont.truetype(path, size, index=index), (path, index)) for path, index in faces()
    ]
    if not chain:
        # Pillow's built-in face: ASCII only.
        return ((ImageFont.load_default(size), None),)
    return tuple(chain)


def _covers(face, ch):
    if face is None:
        return ch.isascii()
    return ord(ch) in _cmap(face)


def _warn_missing(ch):
    kind = "cjk" if is_cjk(ch) else "other"
    if kind in _warned:
        return
    _warned.add(kind)
    log.warning(
        "No installed font has a glyph for %r (U+%04X): grids draw it as a box. To read "
        "such captions, %s.",
        ch,
        ord(ch),
        CJK_FONT_HINT if kind == "cjk" else OTHER_FONT_HINT,
    )


def clean(text):
    """One line of printable characters (generated text may hold any code point)."""
    return "".join(" " if ch.isspace() else ch if ch.isprintable() else "?" for ch in str(text))


def runs(text, size):
    """`text` split into (font, piece) runs, each piece drawn by the first font with its
    glyphs; marks and spaces stay with the run before them."""
    chain = fonts(size)
    out = []
    for ch in text:
        if out and (ch == " " or unicodedata.combining(ch)):
            out[-1][1].append(ch)
            continue
        font = next((f for f, face in chain if _covers(face, ch)), None)
        if font is None:
            _warn_missing(ch)
            font = chain[0][0]
        if out and out[-1][0] is font:
            out[-1][1].append(ch)
        else:
            out.append((font, [ch]))
    return [(font, "".join(chars)) for font, chars in out]


def width(text, size):
    return sum(font.getlength(piece) for font, piece in runs(text, size))


def line_height(size):
    return round(size * 1.3)


def wrap(text, size, max_width, max_lines=None, break_words=True):
    """Lines of `text` no wider than `max_width` pixels: breaks at the last space that
    fits, else (CJK, long words) between characters when `break_words`; returns None
    when a word does not fit and `break_words` is False. Text beyond `max_lines` is cut
    and the last line ends in an ellipsis."""
    words = clean(text).split()
    lines, line = [], ""
    i = 0
    while i < len(words):
        candidate = f"{line} {words[i]}" if line else words[i]
        if width(candidate, size) <= max_width:
            line, i = candidate, i + 1
            continue
        if line:
            lines.append(line)
            line = ""
            continue
        if not break_words:
            return None
        # The word alone is too wide: its longest head that fits starts a line.
        word = words[i]
        cut = max(1, _fitting_prefix(word, size, max_width))
        lines.append(word[:cut])
        words[i] = word[cut:]
    if line:
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and width(last + "…", size) > max_width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    return lines


def _fitting_prefix(word, size, max_width):
    lo, hi = 0, len(word)
    while lo < hi:  # the longest prefix whose width fits
        mid = (lo + hi + 1) // 2
        if width(word[:mid], size) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def draw_lines(draw, xy, lines, size, fill="black"):
    """Draws `lines` from the top-left `xy`, one `line_height(size)` apart, each line's
    runs on one baseline."""
    x0, y = xy
    for text in lines:
        x = x0
        baseline = y + size
        for font, piece in runs(text, size):
            draw.text((x, baseline), piece, fill=fill, font=font, anchor="ls")
            x += font.getlength(piece)
        y += line_height(size)
