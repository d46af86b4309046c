"""What a run writes: metrics (JSONL + TensorBoard), the progress line, image grids,
the manifest. Only process 0 writes; the other processes get writers that do nothing."""

import json
import logging
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

import numpy as np
from PIL import Image, ImageDraw

from mmgen_jax import fonts

log = logging.getLogger("mmgen_jax")


def configure_logging(verbose=False):
    """Our progress lines at INFO on stderr; libraries (Orbax, absl, JAX, TFDS) at WARNING
    and above, or INFO with `verbose` (Orbax's INFO lines narrate every file it writes).
    Idempotent: commands run in-process by tests call it again."""
    from absl import logging as absl_logging

    library_level = logging.INFO if verbose else logging.WARNING
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    for name in ("jax", "orbax", "tensorflow_datasets", "grain"):
        logging.getLogger(name).setLevel(library_level)
    absl_logger = absl_logging.get_absl_logger()
    if not any(isinstance(f, _KnownNoise) for f in absl_logger.filters):
        absl_logger.addFilter(_KnownNoise())
    if not any(getattr(h, "_mmgen_jax", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler._mmgen_jax = True
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class _KnownNoise(logging.Filter):
    """Warnings that say nothing to act on: TFDS suggests OpenCV on every start (PIL serves
    these images); Orbax notes that a checkpoint folder opened read-only is read-only."""

    MESSAGES = ("OpenCV is not installed", "Given directory is read only")

    def filter(self, record):
        return not any(m in record.getMessage() for m in self.MESSAGES)


class MetricWriter:
    """Appends `{"step", "wall_time", **metrics}` lines to metrics.jsonl and mirrors the
    scalars to TensorBoard (tensorboardX: no TensorFlow in the training process).

    `after_step`: the step training resumes from; rows after it (written by a run that
    was killed before its next checkpoint) are dropped, since those steps are redone.
    """

    def __init__(self, workdir, enabled=True, after_step=0):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # imported lazily: process 0 only

        path = os.path.join(workdir, "metrics.jsonl")
        _drop_rows_after(path, after_step)
        self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run; close()
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def scalars(self, step, metrics):
        if not self.enabled:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        record = {"step": int(step), "wall_time": time.time(), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(name, value, int(step))

    def image(self, step, tag, image: Image.Image):
        if self.enabled:
            self._tb.add_image(tag, np.asarray(image.convert("RGB")), int(step), dataformats="HWC")

    def close(self):
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _drop_rows_after(path, step):
    """Keeps the rows of `path` with "step" <= `step` (atomically; no-op if none differ).

    Step 0 means nothing to resume from: rows after it would be erased, not redone, so
    that is refused (the user moves them away to start over)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    # A line cut short by a kill is not JSON: it is dropped with the rows after it.
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            continue
    if len(kept) == len(lines):
        return
    if step == 0:
        raise ValueError(
            f"{path} holds {len(lines) - len(kept)} rows of training, but there is no "
            f"checkpoint to resume from, so this run would start at step 0 and erase them. "
            f"To start over in this workdir, move them away first (mv {path} "
            f"{path[: -len('.jsonl')]}.old.jsonl); or use a new --workdir."
        )
    log.warning("%s: dropping %d rows after step %d (redone)", path, len(lines) - len(kept), step)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


class Progress:
    """A tqdm bar on a terminal; otherwise one log line per call to `log`."""

    def __init__(self, total, initial, enabled=True):
        self.total = total
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        self._last_step, self._last_time = initial, time.perf_counter()
        self.enabled = enabled

    def log(self, step, metrics):
        """Reports `metrics` at `step`; returns the steps/s since the previous call."""
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        if not self.enabled:
            return rate
        shown = " ".join(f"{k}={float(v):.4f}" for k, v in metrics.items())
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(shown)
        else:
            eta = (self.total - step) / rate if rate > 0 else float("inf")
            log.info(
                "step %d/%d %s %.2f steps/s ETA %s", step, self.total, shown, rate, _duration(eta)
            )
        return rate

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _duration(seconds):
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def to_uint8(images):
    """Float images in [-1, 1] -> uint8 in [0, 255] (uint8 input passes through)."""
    if np.asarray(images).dtype == np.uint8:
        return np.asarray(images)
    images = np.asarray(images, np.float32)
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def caption_grid(captions, real, generated, scale=2, text_width=300):
    """One row per caption: the caption, its real image, then its generated images.

    captions: N strings; real: (N, H, W, 3) or None; generated: (N, K, H, W, 3); images
    as floats in [-1, 1] or uint8.
    """
    generated = to_uint8(generated)
    columns = ([("real", real, None)] if real is not None else []) + [
        (f"generated {j + 1}", generated[:, j], None) for j in range(generated.shape[1])
    ]
    return image_table(captions, columns, scale=scale, text_width=text_width)


# Grid text sizes in pixels: captions, notes under images, and the column headers, which
# shrink down to HEADER_SIZES[-1] to fit their column.
CAPTION_SIZE, NOTE_SIZE, HEADER_SIZES = 12, 10, (12, 11, 10, 9, 8)
PAD = 4


def image_table(captions, columns, scale=2, text_width=300, note_lines=0):
    """A grid with one row per caption: the caption on the left, then one image per column.

    columns: (title, images (N, H, W, 3) as floats in [-1, 1] or uint8, notes) triples;
    `notes` is None or N strings written under that column's images (e.g. generated
    captions), wrapped to the image's width in at most `note_lines` lines. Every text
    stays inside its cell: captions and notes wrap (cut with an ellipsis when too long),
    headers wrap and shrink to their column's width.
    """
    h = to_uint8(columns[0][1]).shape[1]
    cell = h * scale
    headers = [_fit_header(title, cell) for title, _, _ in columns]
    header = max(len(lines) * fonts.line_height(size) for size, lines in headers) + PAD
    has_notes = note_lines and any(c[2] is not None for c in columns)
    row_height = cell + PAD + (note_lines * fonts.line_height(NOTE_SIZE) if has_notes else 0)
    grid = Image.new(
        "RGB",
        (text_width + len(columns) * (cell + PAD) + PAD, header + len(captions) * row_height + PAD),
        "white",
    )
    draw = ImageDraw.Draw(grid)
    for c, (size, lines) in enumerate(headers):
        fonts.draw_lines(draw, (text_width + c * (cell + PAD) + PAD, 2), lines, size)
    caption_lines = max(1, (row_height - PAD) // fonts.line_height(CAPTION_SIZE))
    for r, caption in enumerate(captions):
        y = header + r * row_height + PAD
        lines = fonts.wrap(caption, CAPTION_SIZE, text_width - 2 * PAD, caption_lines)
        fonts.draw_lines(draw, (PAD, y), lines, CAPTION_SIZE)
        for c, (_, images, notes) in enumerate(columns):
            x = text_width + c * (cell + PAD) + PAD
            tile = Image.fromarray(to_uint8(images)[r]).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (x, y))
            if notes is not None and note_lines:
                wrapped = fonts.wrap(notes[r], NOTE_SIZE, cell, note_lines)
                fonts.draw_lines(draw, (x, y + cell + 1), wrapped, NOTE_SIZE)
    return grid


def _fit_header(title, width):
    """(size, lines) of a column header no wider than `width`: the largest size on one
    line, else on two lines without breaking a word, else the smallest size broken
    between characters."""
    for max_lines in (1, 2):
        for size in HEADER_SIZES:
            lines = fonts.wrap(title, size, width, break_words=False)
            if lines is not None and len(lines) <= max_lines:
                return size, lines
    size = HEADER_SIZES[-1]
    return size, fonts.wrap(title, size, width, max_lines=3)


def write_json(path, obj):
    """Writes JSON atomically (temp file + rename): a crash never leaves half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def manifest(config):
    """What produced a run: config hash, package versions, git revision, devices, flags."""
    import hashlib

    import jax

    config_json = config.to_json(sort_keys=True)
    versions = {}
    for package in (
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax-checkpoint",
        "tensorflow-datasets",
        "grain",
        "numpy",
        "ml-collections",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    devices = jax.devices()
    return {
        "config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
        "python": platform.python_version(),
        "versions": versions,
        "git": _git_state(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device_kinds": sorted({d.device_kind for d in devices}),
        "device_count": len(devices),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def record_start(workdir, config, start_step, changed=()):
    """Adds this invocation to `workdir`/manifest.json and returns the new manifest.

    "starts" lists every invocation: `manifest(config)` plus the step it started from,
    num_steps, when, and the config fields it `changed` from config.json (those allowed to
    change on resumption). The top-level fields are those of the last start that trained
    (start_step < num_steps): what the run's latest steps came from. A rerun that has
    nothing to do only adds to the list."""
    path = os.path.join(workdir, "manifest.json")
    top = last_training_start(workdir) or {}
    starts = _read_json(path).get("starts") or ([top] if top else [])  # older: one start
    num_steps = int(config.train.num_steps)
    record = {
        **manifest(config),
        "start_step": int(start_step),
        "num_steps": num_steps,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "changed": sorted(changed),
    }
    if start_step < num_steps:
        top = record
    updated = {**top, "starts": [*starts, record]}
    write_json(path, updated)
    return updated


def last_training_start(workdir):
    """manifest.json's record of the last start that trained (older manifests: the only
    one), or None if there is no manifest. Resume checks compare against this one."""
    record = _read_json(os.path.join(workdir, "manifest.json"))
    record.pop("starts", None)
    return record or None


def _read_json(path):
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _git_state():
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(
            ["git", "-C", here, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {
            "revision": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed wheel)
