"""One self-contained HTML page of runs and seed studies: open it in any browser, offline.

    python -m mmgen_jax.report runs/gan                  # writes runs/gan/report.html
    python -m mmgen_jax.report runs/gan runs/vae         # both runs' curves overlaid: ./report.html
    python -m mmgen_jax.report runs/study --out=study.html   # a sweep root: mean ± std over seeds

Per run: a plot per metric of metrics.jsonl over steps (losses, steps_per_sec, every eval/...
metric), the latest sample grid (samples/step_N.png) with a slider over earlier ones, its
config.json and manifest.json. Runs given together share each metric's plot; a sweep root
(ROOT/seed_N/ runs, study.md) is drawn as its seeds' mean with a ± one standard deviation
band. Plots (matplotlib) and grids are PNGs inside the page as data URIs: no network, no
server. Training writes RUN/report.html at every sample grid (`train.write_report`).
"""

import base64
import html
import io
import json
import logging
import math
import os
import re
import sys
import threading

from absl import app, flags

log = logging.getLogger("mmgen_jax")

# Keys of metrics.jsonl that are not plotted.
NOT_PLOTTED = ("step", "wall_time")
# Grids embedded per run: evenly spaced over the run, always with the first and the latest.
MAX_GRIDS = 12
PLOT_INCHES, PLOT_DPI = (3.6, 2.4), 100

_STEP_FILE = re.compile(r"step_(\d+)\.png$")
_SEED_DIR = re.compile(r"seed_(\d+)$")


class Source:
    """What one command-line path draws: a run (`runs` = [it]) or a seed study (`runs` =
    its seed_N directories with metrics, by seed)."""

    def __init__(self, path, name):
        self.path, self.name = path, name
        self.is_study = not os.path.isfile(os.path.join(path, "metrics.jsonl"))
        if self.is_study:
            seeds = sorted(
                (int(m.group(1)), entry)
                for entry in os.listdir(path)
                if (m := _SEED_DIR.match(entry))
                and os.path.isfile(os.path.join(path, entry, "metrics.jsonl"))
            )
            self.runs = [os.path.join(path, entry) for _, entry in seeds]
        else:
            self.runs = [path]


def sources(paths):
    """A `Source` per path, named by its folder (by the path as given where names clash);
    a path that is neither a run nor a sweep root raises ValueError naming it."""
    for path in paths:
        is_run = os.path.isfile(os.path.join(path, "metrics.jsonl"))
        is_study = os.path.isdir(path) and (
            os.path.isfile(os.path.join(path, "study.md"))
            or any(_SEED_DIR.match(e) for e in os.listdir(path))
        )
        if not (is_run or is_study):
            raise ValueError(
                f"{path} is neither a run (no metrics.jsonl: pass the --workdir of "
                f"mmgen_jax.main once it has logged a step) nor a seed study (no study.md or "
                f"seed_N/: pass the --root of mmgen_jax.sweep)"
            )
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    if len(set(names)) < len(names):
        names = [os.path.normpath(p) for p in paths]
    return [Source(p, n) for p, n in zip(paths, names, strict=True)]


def read_metrics(run_dir):
    """metrics.jsonl's rows; a line being written as we read (not JSON yet) is skipped."""
    rows = []
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    return rows


def series(rows):
    """{metric: ([steps], [values])} of the finite numeric values in `rows`."""
    out = {}
    for row in rows:
        for key, value in row.items():
            if key in NOT_PLOTTED or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                steps, values = out.setdefault(key, ([], []))
                steps.append(int(row["step"]))
                values.append(float(value))
    return out


def band(per_run):
    """[{step: value}] per seed -> (steps, mean, std, n) over the seeds that logged each
    step (std: sample standard deviation, 0 where one seed has the step)."""
    import numpy as np

    steps = sorted({s for run in per_run for s in run})
    mean, std, n = [], [], []
    for step in steps:
        values = np.asarray([run[step] for run in per_run if step in run])
        mean.append(float(values.mean()))
        std.append(float(values.std(ddof=1)) if len(values) > 1 else 0.0)
        n.append(len(values))
    return steps, mean, std, n


def metric_order(metric):
    """Losses first, then throughput, then evaluation metrics; by name within each."""
    return ("/" in metric, metric == "steps_per_sec", metric)


def colour(i):
    """The i-th source's colour (matplotlib's default cycle), in its plots and legend."""
    from matplotlib.colors import to_hex

    return to_hex(f"C{i % 10}")


def plots(srcs):
    """[(metric, PNG bytes)]: one plot per metric, every source drawn in `colour(i)`; the
    page's legend names them (one legend for all plots, none inside a plot to hide data)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves = []  # per source: {metric: ([steps], [values])} of a run, or of every seed
    for src in srcs:
        curves.append([series(read_metrics(run)) for run in src.runs])
    metrics = sorted({m for per_run in curves for run in per_run for m in run}, key=metric_order)
    out = []
    for metric in metrics:
        fig = Figure(figsize=PLOT_INCHES, dpi=PLOT_DPI)
        # Fixed margins: a layout engine would double the time of every plot.
        fig.subplots_adjust(left=0.17, right=0.97, top=0.89, bottom=0.19)
        ax = fig.add_subplot()
        for i, (src, per_run) in enumerate(zip(srcs, curves, strict=True)):
            color = colour(i)
            present = [dict(zip(*run[metric], strict=True)) for run in per_run if metric in run]
            if not present:
                continue
            if src.is_study:
                steps, mean, std, _ = band(present)
                low = [m - s for m, s in zip(mean, std, strict=True)]
                high = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(steps, low, high, color=color, alpha=0.25, linewidth=0)
                ax.plot(steps, mean, color=color, marker=_marker(steps))
            else:
                steps, values = zip(*sorted(present[0].items()), strict=True)
                ax.plot(steps, values, color=color, marker=_marker(steps))
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out.append((metric, buf.getvalue()))
    return out


def _marker(steps):
    return "o" if len(steps) <= 20 else None  # few points: show where they are


def grid_files(run_dir):
    """[(step, path)] of the run's sample grids, by step."""
    directory = os.path.join(run_dir, "samples")
    if not os.path.isdir(directory):
        return []
    found = ((_STEP_FILE.match(name), name) for name in os.listdir(directory))
    return sorted((int(m.group(1)), os.path.join(directory, name)) for m, name in found if m)


def spaced(items, k):
    """At most `k` of `items`, evenly spaced, always with the first and the last."""
    if len(items) <= k:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in picks]


def _data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None  # a run being started: shown as missing


def _pre(title, text):
    return (
        f"<details><summary>{html.escape(title)}</summary><pre>{html.escape(text)}</pre></details>"
    )


def run_html(run_dir, title, level=2):
    """A run's section: where it stands, its grids with a slider, its config and manifest."""
    rows = read_metrics(run_dir)
    config = _read_json(os.path.join(run_dir, "config.json"))
    manifest = _read_json(os.path.join(run_dir, "manifest.json"))
    facts = [f"<code>{html.escape(os.path.abspath(run_dir))}</code>"]
    if rows:
        total = (config or {}).get("train", {}).get("num_steps")
        facts.append(f"step {rows[-1]['step']}" + (f" of {total}" if total else ""))
    if manifest:
        facts.append(
            f"{manifest.get('device_count')} × {', '.join(manifest.get('device_kinds', []))}"
        )
        git = manifest.get("git") or {}
        if git.get("revision"):
            facts.append(f"git {git['revision'][:10]}" + (" (dirty)" if git.get("dirty") else ""))
    parts = [f"<h{level}>{html.escape(title)}</h{level}>", f"<p>{' · '.join(facts)}</p>"]
    grids = [(step, png) for step, png in _read_grids(run_dir) if png is not None]
    if grids:
        parts.append(_grids_html(grids))
    else:
        parts.append("<p>No sample grid yet.</p>")
    for name, obj in (("config.json", config), ("manifest.json", manifest)):
        if obj is not None:
            parts.append(_pre(name, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)))
    return "\n".join(parts)


def _read_grids(run_dir):
    """[(step, PNG bytes or None)] of the grids the page shows; None for a PNG that is
    still being written (no end chunk yet), which the page leaves out."""
    out = []
    for step, path in spaced(grid_files(run_dir), MAX_GRIDS):
        with open(path, "rb") as f:
            png = f.read()
        out.append((step, png if png[-12:-4] == b"\0\0\0\0IEND" else None))
    return out


def _grids_html(grids):
    last = len(grids) - 1
    images = []
    for i, (step, png) in enumerate(grids):
        uri = _data_uri(png)
        hidden = "" if i == last else " hidden"
        images.append(
            f'<img class="grid" data-step="{step}" alt="samples at step {step}"{hidden} src="{uri}">'
        )
    slider = (
        f'<input type="range" min="0" max="{last}" value="{last}" aria-label="sample step">'
        if last
        else ""
    )
    label = f'Samples at step <span class="step">{grids[-1][0]}</span>'
    if last:
        label += f" ({len(grids)} grids; the slider shows earlier ones)"
    return f'<div class="grids"><p>{label}</p>{slider}<div>{"".join(images)}</div></div>'


def study_html(src):
    parts = [f"<h2>{html.escape(src.name)}: seed study</h2>"]
    try:
        with open(os.path.join(src.path, "study.md"), encoding="utf-8") as f:
            parts.append(f"<pre>{html.escape(f.read())}</pre>")
    except OSError:
        parts.append("<p>No study.md yet.</p>")
    if not src.runs:
        parts.append("<p>No seed has logged a step yet.</p>")
    for run in src.runs:
        body = run_html(run, os.path.basename(run), level=3)
        parts.append(
            f"<details><summary>{html.escape(os.path.basename(run))}</summary>{body}</details>"
        )
    return "\n".join(parts)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.swatch { display: inline-block; width: 1.6em; height: 0.7em; margin-right: 0.3em; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; }
.plots img { width: 360px; max-width: 100%; border: 1px solid #ddd; }
.grids img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
.grids input { width: min(600px, 100%); }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 12px; }
section { border-top: 1px solid #ccc; margin-top: 1.5em; }
"""

# The grid slider: shows the image at the slider's position and names its step.
SCRIPT = """
document.querySelectorAll(".grids").forEach(function (box) {
  var slider = box.querySelector("input");
  if (!slider) return;
  var images = box.querySelectorAll("img");
  slider.addEventListener("input", function () {
    var shown = Number(slider.value);
    images.forEach(function (img, i) { img.hidden = i !== shown; });
    box.querySelector(".step").textContent = images[shown].dataset.step;
  });
});
"""


def legend(srcs):
    """Each source's colour and name; for a study, what its line and band are."""
    items = []
    for i, src in enumerate(srcs):
        what = (
            f" (mean ± std over {len(src.runs)} seed{'s' * (len(src.runs) != 1)})"
            if src.is_study
            else ""
        )
        items.append(
            f'<span class="swatch" style="background:{colour(i)}"></span>'
            f"{html.escape(src.name)}{what}"
        )
    return " &nbsp; ".join(items)


def page(srcs):
    """The report's HTML text."""
    names = ", ".join(s.name for s in srcs)
    body = [f"<h1>mmgen_jax: {html.escape(names)}</h1>"]
    figures = plots(srcs)
    body.append('<section id="curves"><h2>Training curves</h2>')
    body.append(f'<p class="legend">{legend(srcs)}</p>')
    if figures:
        body.append('<div class="plots">')
        for metric, png in figures:
            body.append(
                f'<img class="plot" data-metric="{html.escape(metric)}" '
                f'alt="{html.escape(metric)} over steps" src="{_data_uri(png)}">'
            )
        body.append("</div>")
    else:
        body.append("<p>No metrics logged yet.</p>")
    body.append("</section>")
    for src in srcs:
        content = study_html(src) if src.is_study else run_html(src.path, src.name)
        body.append(f'<section class="source">{content}</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(names)}: mmgen_jax report</title>"
        f"<style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def write_report(run_dirs, out_path):
    """Writes the report of `run_dirs` (runs or sweep roots) to `out_path` atomically, so a
    browser reloading it never reads half a page. Returns `out_path`."""
    text = page(sources(list(run_dirs)))
    tmp = f"{out_path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out_path)
    return out_path


class BackgroundReport:
    """Rewrites a run's report.html on a thread of its own, so training never waits on
    the plots (a few seconds per page). A request while a page is being written is
    remembered and served when that write ends: the page is at most one write behind.
    A failed write logs a warning and training goes on; `close` waits for the last one."""

    def __init__(self, run_dir, out_path=None, enabled=True):
        self.run_dir = run_dir
        self.out_path = out_path or os.path.join(run_dir, "report.html")
        self.enabled = enabled
        self._lock = threading.Lock()
        self._thread = None
        self._pending = False
        self._warned = False

    def request(self):
        if not self.enabled:
            return
        with self._lock:
            if self._thread is not None:
                self._pending = True
                return
            self._thread = threading.Thread(target=self._serve, name="report", daemon=True)
            self._thread.start()

    def _serve(self):
        while True:
            try:
                write_report([self.run_dir], self.out_path)
            except Exception as e:  # noqa: BLE001 - a report is never worth a training run
                if not self._warned:
                    self._warned = True
                    log.warning("Could not write %s (%s); training goes on.", self.out_path, e)
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
                self._pending = False

    def close(self):
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more run directories (or sweep roots) to report on")
    out = flags.FLAGS.out or (
        os.path.join(paths[0], "report.html") if len(paths) == 1 else "report.html"
    )
    try:
        write_report(paths, out)
    except ValueError as e:
        sys.exit(f"FATAL: {e}")
    print(f"wrote {out}", file=sys.stdout)


if __name__ == "__main__":
    flags.DEFINE_string(
        "out", None, "The HTML file; default RUN/report.html for one run, else ./report.html."
    )
    app.run(main)
