"""caption_folder reads captions.csv as RFC 4180 (quoted captions may span lines) and
prepares a folder holding files no row names, dangling symlinks included."""

import os

import pytest
from test_caption_folder import IMAGES, _write_images, kwargs

from mmgen_jax.data import caption_folder as cf
from mmgen_jax.data import pipeline, prepare

MULTILINE = 'a seven\nwritten in red, "quoted"\n\nover blue'


def _csv_folder(root, *extra_lines):
    root.mkdir()
    _write_images(root)
    lines = [
        b"image,caption,split",
        b'rgb.png,"a seven\nwritten in red, ""quoted""\n\nover blue",test',  # lines 2-5
        b"grey.png,a grey thing,",  # line 6
        *extra_lines,
    ]
    lines += [f"{name},picture of {name},".encode() for name, _, _ in IMAGES]
    (root / "captions.csv").write_bytes(b"\r\n".join(lines) + b"\r\n")
    return root


def test_a_quoted_caption_spanning_lines_is_one_row(tmp_path):
    root = _csv_folder(tmp_path / "data", b"tiny.png,caf\xe9,", b'wide.png,"ok",train')
    rows, problems = cf.check_rows(root.resolve(), 32)
    first = rows[0]
    assert (first.where, first.image, first.caption) == ("captions.csv:2", "rgb.png", MULTILINE)
    assert rows[1].where == "captions.csv:6"
    # A row that is not UTF-8 is reported with its line; the rows after it read on.
    assert problems == ["captions.csv:7: not UTF-8 (in b'caf?')"]
    assert rows[2].where == "captions.csv:8" and rows[2].caption == "ok"


def test_a_quoted_caption_spanning_lines_is_stored_whole(tmp_path):
    root = _csv_folder(tmp_path / "data")
    test = list(
        pipeline.load_source("caption_folder", "test", str(tmp_path / "tfds"), kwargs(root))
    )
    assert MULTILINE in {ex["caption"].decode() for ex in test}


def test_malformed_csv_names_the_line(tmp_path):
    root = _csv_folder(tmp_path / "data", b'tiny.png,"a "bad" quote,')
    rows, problems = cf.check_rows(root.resolve(), 32)
    assert problems == [
        "captions.csv:7: malformed CSV (',' expected after '\"'); nothing after it is read"
    ]
    assert [r.where for r in rows] == ["captions.csv:2", "captions.csv:6"]


def test_a_dangling_symlink_no_row_names_does_not_stop_preparation(tmp_path):
    root = _csv_folder(tmp_path / "data")
    os.symlink(root / "gone.png", root / "dangling.png")
    os.symlink("loop.png", root / "loop.png")  # a symlink to itself: stat fails too
    name = prepare.resolve_name("caption_folder", kwargs(root))
    assert name == prepare.resolve_name("caption_folder", kwargs(root))
    rows, problems = cf.check_rows(root.resolve(), 32)
    assert not problems and len(rows) == 2 + len(IMAGES)


def test_a_row_naming_a_dangling_symlink_is_a_problem(tmp_path):
    root = _csv_folder(tmp_path / "data", b"dangling.png,a broken link,")
    os.symlink(root / "gone.png", root / "dangling.png")
    _, problems = cf.check_rows(root.resolve(), 32)
    assert problems == ["captions.csv:7: image 'dangling.png' not found"]
    with pytest.raises(prepare.DatasetPreparationError, match="dangling.png' not found"):
        prepare.ensure_prepared("caption_folder", str(tmp_path / "tfds"), kwargs(root))
