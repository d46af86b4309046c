"""`caption_folder`: a user's own folder of images and captions, as a TFDS dataset.

Layout of the folder:

    my_data/
      captions.jsonl      one JSON object a line:
                          {"image": "cats/1.png", "caption": "a cat", "split": "train"}
      cats/1.png ...      images (PNG/JPEG/anything PIL reads; any size and mode)

or `captions.csv` with a header row and the same columns (RFC 4180: a quoted caption may
hold commas, quotes and line breaks). `split` is optional: without it a stable hash of the
image path puts ~10% of the images (all their captions together) in `test`, the rest in
`train`. An image may have several captions (one
row each, one example each).

At preparation every image is converted to RGB and resized aspect-preserving and
centre-cropped to `image_size` x `image_size`. Features: `image` (PNG), `caption`,
`image_path` (relative to the folder).

Bad input (a missing image, an unreadable or truncated image, an empty caption, a non-UTF-8
or malformed line, a duplicate image+caption row) is reported with file:line; preparation
fails listing every problem, or with `skip_bad` skips those rows and records how many in the
dataset description.

The prepared copy depends on the folder, so its builder config name is a hash of the
absolute path, the settings and every file's size and mtime (`config_name`): a changed
folder is prepared anew instead of silently reusing stale data. Prepared with
`python -m mmgen_jax.data.prepare --dataset=caption_folder --path=DIR [--image_size=32]
[--skip_bad]`, or by the input pipeline on first use.
"""

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import re
import typing

import tensorflow_datasets as tfds

from mmgen_jax.data import prepare

log = logging.getLogger(__name__)

CAPTION_FILES = ("captions.jsonl", "captions.csv")
TEST_FRACTION_PERCENT = 10  # share of images in `test` when rows give no split
MAX_LISTED_PROBLEMS = 200  # longer lists are cut in the error, never in the count
_SPLIT_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def config_name(path: str, image_size: int, skip_bad: bool) -> str:
    """Names the prepared copy: a hash of the folder's contents listing and the settings.

    Sizes and mtimes (not contents) keep this fast on large folders while still noticing
    edits, additions and removals.
    """
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise prepare.DatasetPreparationError(
            f"caption_folder: {root} is not a directory (set --config.data.path=)."
        )
    h = hashlib.sha256(json.dumps([root, int(image_size), bool(skip_bad)]).encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            try:
                st = os.stat(full)
            except OSError:  # a dangling symlink: only a row naming it is a problem
                st = os.lstat(full)
            h.update(f"{os.path.relpath(full, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"s{int(image_size)}_{h.hexdigest()[:16]}"


def _bucket(image: str) -> int:
    return int(hashlib.sha256(image.encode("utf-8")).hexdigest()[:8], 16) % 100


def default_split(image: str) -> str:
    """`test` for ~10% of image paths, else `train`; stable across runs and machines."""
    return "test" if _bucket(image) < TEST_FRACTION_PERCENT else "train"


@dataclasses.dataclass(frozen=True)
class Row:
    where: str  # "captions.jsonl:7"
    image: str
    caption: str
    split: str
    split_given: bool = True


def _ensure_train_and_test(rows: list[Row]) -> list[Row]:
    """Small folders may hash no image into `test` (or all into it); then the lowest- (or
    highest-) hashing image without an explicit split moves over, so that training has data
    and sample grids have captions."""
    if len({r.image for r in rows}) < 2:
        return rows
    for split, pick in (("test", 0), ("train", -1)):
        if any(r.split == split for r in rows):
            continue
        free = sorted({r.image for r in rows if not r.split_given}, key=lambda i: (_bucket(i), i))
        if free:
            rows = [
                dataclasses.replace(r, split=split) if r.image == free[pick] else r for r in rows
            ]
    return rows


def _read_rows(root: pathlib.Path) -> tuple[list[Row], list[str]]:
    """Parses the captions file into rows and a list of 'file:line: problem' strings."""
    present = [name for name in CAPTION_FILES if (root / name).is_file()]
    if not present:
        raise prepare.DatasetPreparationError(
            f"caption_folder: no captions file in {root}: write captions.jsonl (one "
            '{"image": ..., "caption": ...} a line) or captions.csv (header image,caption).'
        )
    if len(present) > 1:
        raise prepare.DatasetPreparationError(
            f"caption_folder: {root} has both {' and '.join(present)}; keep one."
        )
    name = present[0]
    records = _jsonl_records if name.endswith(".jsonl") else _csv_records
    rows, problems = [], []
    for where, record in records(root / name):
        if isinstance(record, str):  # what is wrong with this line
            problems.append(f"{where}: {record}")
            continue
        image, caption, split = record.get("image"), record.get("caption"), record.get("split")
        if not isinstance(image, str) or not image.strip():
            problems.append(f"{where}: no image path")
            continue
        if not isinstance(caption, str) or not caption.strip():
            problems.append(f"{where}: empty caption for image {image!r}")
            continue
        given = split not in (None, "")
        if not given:
            split = default_split(image)
        elif not isinstance(split, str) or not _SPLIT_RE.match(split):
            problems.append(f"{where}: invalid split {split!r} (use e.g. train or test)")
            continue
        rows.append(Row(where, image, caption.strip(), split, given))
    return rows, problems


def _jsonl_records(path):
    """(file:line, a dict or a problem string) per non-blank line."""
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path.name}:{number}"
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            yield where, f"not UTF-8 ({e.reason} at byte {e.start})"
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield where, f"not valid JSON ({e.msg})"
            continue
        yield where, record if isinstance(record, dict) else "not a JSON object"


def _csv_records(path):
    """(file:line of the record's first line, a dict or a problem string) per data record,
    read with the csv module: a quoted field may hold commas, quotes and line breaks
    (RFC 4180). Bytes that are not UTF-8 make that record a problem, not the file."""
    # surrogateescape keeps undecodable bytes as lone surrogates, found per record below.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, first = None, 1
    while True:
        where = f"{path.name}:{first}"
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # the reader cannot find the next record's start
            yield where, f"malformed CSV ({e}); nothing after it is read"
            return
        first = reader.line_num + 1
        if not any(v.strip() for v in values):
            continue
        bad = next((v for v in values if _has_surrogates(v)), None)
        if bad is not None:
            yield where, f"not UTF-8 (in {bad.encode('utf-8', 'replace')[:40]!r})"
            continue
        if header is None:
            header = [v.strip() for v in values]
            if "image" not in header or "caption" not in header:
                raise prepare.DatasetPreparationError(
                    f"caption_folder: {where}: the header row must name the columns "
                    f"image and caption (and optionally split), got {header}."
                )
            continue
        yield where, dict(zip(header, values))


def _has_surrogates(value):
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _open_rgb(path: pathlib.Path, size: int):
    """The image as RGB, resized aspect-preserving and centre-cropped to (size, size)."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()  # decodes fully: truncated files fail here, not later
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Transparent pixels become white, not whatever colour they happen to store.
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        else:
            img = img.convert("RGB")
        return ImageOps.fit(img, (size, size), Image.BICUBIC)


def check_rows(root: pathlib.Path, size: int) -> tuple[list[Row], list[str]]:
    """Rows whose image decodes and that are not duplicates, and every problem found."""
    rows, problems = _read_rows(root)
    good, seen, image_ok = [], {}, {}
    for row in rows:
        target = (root / row.image).resolve()
        if root not in target.parents:
            problems.append(f"{row.where}: image {row.image!r} is outside the folder")
            continue
        if row.image not in image_ok:
            if not target.is_file():
                image_ok[row.image] = "not found"
            else:
                try:
                    _open_rgb(target, size)
                    image_ok[row.image] = ""
                except Exception as e:  # noqa: BLE001 (PIL raises many types for bad files)
                    image_ok[row.image] = f"cannot be read ({type(e).__name__}: {e})"
        if image_ok[row.image]:
            problems.append(f"{row.where}: image {row.image!r} {image_ok[row.image]}")
            continue
        key = (row.image, row.caption)
        if key in seen:
            problems.append(
                f"{row.where}: duplicate of {seen[key]} (same image {row.image!r} and caption)"
            )
            continue
        seen[key] = row.where
        good.append(row)
    good = _ensure_train_and_test(good)
    # Problems in file order, so the list reads like the file.
    problems.sort(key=lambda p: int(p.split(":", 2)[1]))
    return good, problems


@dataclasses.dataclass(eq=False)
class CaptionFolderConfig(tfds.core.BuilderConfig):
    """One folder + settings; build with `make_config`, which names it by their hash."""

    path: str = ""
    image_size: int = 32
    skip_bad: bool = False


def make_config(path: str, image_size: int = 32, skip_bad: bool = False) -> CaptionFolderConfig:
    root = os.path.abspath(path)
    return CaptionFolderConfig(
        name=config_name(root, image_size, skip_bad),
        description=f"{root} at {image_size}x{image_size}",
        path=root,
        image_size=int(image_size),
        skip_bad=bool(skip_bad),
    )


class CaptionFolder(tfds.core.GeneratorBasedBuilder):
    """Images and captions from a user's folder (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: typing.ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "caption": tfds.features.Text(),
                    "image_path": tfds.features.Text(doc="Relative to the folder."),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Everything is local.
        cfg = self.builder_config
        root = pathlib.Path(cfg.path).resolve()
        rows, problems = check_rows(root, cfg.image_size)
        if problems and not cfg.skip_bad:
            listed = problems[:MAX_LISTED_PROBLEMS]
            if len(problems) > len(listed):
                listed.append(f"... and {len(problems) - len(listed)} more")
            raise prepare.DatasetPreparationError(
                f"caption_folder: {len(problems)} problem(s) in {root}:\n  "
                + "\n  ".join(listed)
                + "\nFix them, or skip those rows with --config.data.skip_bad=True "
                "(prepare.py: --skip_bad)."
            )
        for p in problems:
            log.warning("caption_folder: skipped %s", p)
        note = f"\n\nPrepared from {root}: {len(rows)} examples, {len(problems)} bad rows skipped."
        if problems:
            log.warning("caption_folder: skipped %d bad row(s) in %s", len(problems), root)
            note += "\n" + "\n".join(problems[:MAX_LISTED_PROBLEMS])
        # The description is written to dataset_info.json, so readers see what was skipped.
        self.info.as_proto.description += note
        if not any(r.split == "train" for r in rows):
            raise prepare.DatasetPreparationError(
                f"caption_folder: no usable rows for the train split in {root} (at least two "
                "images are needed to have both train and test)."
            )
        # TFDS cannot write an empty split, so only splits that have rows exist.
        splits = sorted({r.split for r in rows})
        return {s: self._generate_examples(root, [r for r in rows if r.split == s]) for s in splits}

    def _generate_examples(self, root: pathlib.Path, rows: list[Row]):
        size = self.builder_config.image_size
        for row in rows:
            yield (
                row.where,
                {
                    "image": _open_rgb(root / row.image, size),
                    "caption": row.caption,
                    "image_path": row.image,
                },
            )
