"""Sample grids: headers inside their columns, captions and notes wrapped inside their
cells, Chinese drawn with real glyphs, and one warning where no CJK font is installed."""

import logging
import pathlib

import numpy as np
import pytest

from mmgen_jax import fonts, writers

TOFU = "\U0010fffd"  # a private-use code point no font has: drawn as the missing-glyph box
RNG = np.random.default_rng(0)


def _images(n, size=16):
    return RNG.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _ink(pixels):
    """Pixels that are not the white background."""
    return np.asarray(pixels, np.int32).min(axis=-1) < 250


def _caption_cell(caption):
    grid = writers.image_table([caption], [("real", _images(1, 32), None)], scale=2)
    # The caption column: left of the images, below the header.
    return np.asarray(grid)[20:, : 300 - writers.PAD]


@pytest.fixture
def no_cjk_font(monkeypatch, caplog):
    """The fonts a machine without CJK fonts has; the process's font caches restored after."""
    monkeypatch.setattr(fonts, "find_cjk_font", lambda: None)
    monkeypatch.setattr(fonts, "_warned", set())
    fonts.faces.cache_clear()
    fonts.fonts.cache_clear()
    logger = logging.getLogger("mmgen_jax")
    logger.addHandler(caplog.handler)  # the CLI's logging setup stops propagation
    yield caplog
    logger.removeHandler(caplog.handler)
    monkeypatch.undo()
    fonts.faces.cache_clear()
    fonts.fonts.cache_clear()


def test_chinese_captions_are_glyphs_not_missing_glyph_boxes():
    if fonts.find_cjk_font() is None:
        pytest.skip(f"no CJK font installed here ({fonts.CJK_FONT_HINT})")
    zhong, wen, tofu = (_caption_cell(c) for c in ("中", "文", TOFU))
    assert _ink(tofu).sum() > 20  # the box is drawn: the comparison below means something
    # Missing glyphs all draw the same box; real glyphs differ from it and from each other.
    for glyph in (zhong, wen):
        assert _ink(glyph).sum() > 20
        assert (_ink(glyph) != _ink(tofu)).sum() > 20
    assert (_ink(zhong) != _ink(wen)).sum() > 20
    # A mixed caption keeps its Latin part in the Latin face and wraps inside its cell.
    mixed = writers.caption_grid(
        ["数字五，黑色写在绿色背景上 the digit five"] * 2, None, _images(2)[:, None]
    )
    assert _ink(np.asarray(mixed)[:, 300 - writers.PAD : 300 + writers.PAD]).sum() == 0


def test_without_a_cjk_font_one_warning_names_the_package(no_cjk_font):
    no_cjk_font.set_level(logging.WARNING, logger="mmgen_jax")
    for _ in range(2):
        writers.caption_grid(["数字五", "七"], None, _images(2)[:, None])
    warnings = {r.getMessage() for r in no_cjk_font.records if "glyph" in r.getMessage()}
    assert len(warnings) == 1, warnings
    (message,) = warnings
    assert "fonts-wqy-microhei" in message and "fonts-noto-cjk" in message
    assert "PingFang" in message


def _gaps_are_blank(grid, cell, columns, top, bottom):
    """True when nothing is drawn between image columns (nor left of the first, nor right
    of the last) in rows top:bottom."""
    pixels = np.asarray(grid)
    for c in range(columns + 1):
        x = 300 + c * (cell + writers.PAD)
        if _ink(pixels[top:bottom, x : x + writers.PAD]).any():
            return False
    return True


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_headers_fit_their_columns(scale):
    titles = ["real", "reconstruction", "generated 1", "from caption 12", "一个很长的中文标题"]
    cell = 16 * scale
    columns = [(t, _images(2), None) for t in titles]
    grid = writers.image_table(["a", "b"], columns, scale=scale)
    header = grid.height - 2 * (cell + writers.PAD) - writers.PAD
    assert _gaps_are_blank(grid, cell, len(titles), 0, header)
    pixels = np.asarray(grid)
    for c in range(len(titles)):  # every header is drawn
        x = 300 + c * (cell + writers.PAD) + writers.PAD
        assert _ink(pixels[:header, x : x + cell]).sum() > 5


def test_captions_and_notes_wrap_inside_their_cells():
    long = "the digit five written in black on a green background " * 6
    notes = ["a generated caption far too long for one line under a small image " * 3] * 2
    columns = [("real", _images(2), notes), ("generated 1", _images(2), notes)]
    note_lines, scale = 3, 3
    grid = writers.image_table([long, "七"], columns, scale=scale, note_lines=note_lines)
    cell = 16 * scale
    row = cell + writers.PAD + note_lines * fonts.line_height(writers.NOTE_SIZE)
    header = grid.height - 2 * row - writers.PAD
    assert _gaps_are_blank(grid, cell, len(columns), 0, grid.height)
    pixels = np.asarray(grid)
    caption = _ink(pixels[header:, : 300 - writers.PAD])
    lines_with_ink = np.flatnonzero(caption[:row].any(axis=1))
    assert lines_with_ink.max() - lines_with_ink.min() > 3 * fonts.line_height(12)  # wrapped
    # The too-long caption is cut inside its row: the band above the next row is empty.
    assert not caption[row - writers.PAD : row].any()
    # Notes fill at most note_lines lines under their image.
    under = _ink(pixels[header + writers.PAD + cell : header + row, 300 : 300 + cell])
    assert under.any() and not under[note_lines * fonts.line_height(writers.NOTE_SIZE) :].any()


def test_wrap_breaks_cjk_and_long_words_and_ends_cut_text_with_an_ellipsis():
    lines = fonts.wrap("中文字幕很长很长很长很长", 12, 40)
    assert len(lines) > 1 and all(fonts.width(line, 12) <= 40 for line in lines)
    lines = fonts.wrap("averyveryverylongword and more words", 12, 50, max_lines=2)
    assert len(lines) == 2 and lines[-1].endswith("…")
    assert all(fonts.width(line, 12) <= 50 for line in lines)
    assert fonts.wrap("generated 1", 12, 30, break_words=False) is None
    assert fonts.clean("a\nb\x00c") == "a b?c"


def test_a_cjk_font_is_found_at_known_paths_without_fontconfig(monkeypatch):
    known = [p for p in fonts.KNOWN_CJK_FONTS if pathlib.Path(p).is_file()]
    if not known:
        pytest.skip(f"no CJK font at the known paths ({fonts.CJK_FONT_HINT})")
    monkeypatch.setattr(fonts, "_fontconfig", lambda *args: "")  # macOS, Windows
    assert fonts.find_cjk_font() == (known[0], 0)
