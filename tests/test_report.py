"""The HTML report of a real smoke run, of two runs overlaid and of a seed study (the one
sweep writes), checked in its text and, where Chromium is installed, in a headless browser."""

import base64
import io
import json
import logging
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import ROOT, load_config
from PIL import Image

from mmgen_jax import report, sweep

TAB10 = {"C0": (0x1F, 0x77, 0xB4), "C1": (0xFF, 0x7F, 0x0E)}  # matplotlib's first colours


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, data_dir):
    """A finished 6-step GAN smoke run (grids at steps 3 and 6), trained once per session."""
    from mmgen_jax import train

    config = load_config("gan", "smoke")
    config.data.data_dir = data_dir
    config.train.write_report = True  # smoke variants do not write one
    workdir = tmp_path_factory.mktemp("runs") / "gan"
    train.train_and_evaluate(config, str(workdir))
    return workdir


def _copy_run(run, dest, shift=0.0, eval_rows=()):
    """A copy of the real run, its metrics shifted by `shift`, with `eval_rows` appended
    (smoke runs do not evaluate: evaluation needs a trained domain evaluator)."""
    shutil.copytree(run, dest)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for key in row:
            if key not in ("step", "wall_time"):
                row[key] += shift
    rows += list(eval_rows)
    (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


def _images(text):
    """{data-metric or data-step: decoded PNG} of the page's <img> elements."""
    found = {}
    for tag in re.findall(r"<img [^>]*>", text):
        key = re.search(r'data-(?:metric|step)="([^"]+)"', tag).group(1)
        uri = re.search(r'src="([^"]+)"', tag).group(1)
        assert uri.startswith("data:image/png;base64,"), uri[:40]
        found[key] = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")
    return found


def _has_colour(image, rgb, tolerance=12, at_least=30):
    diff = np.abs(np.asarray(image, np.int32) - np.asarray(rgb)).max(axis=-1)
    return int((diff <= tolerance).sum()) >= at_least


def test_report_of_a_run_has_every_metric_its_grids_config_and_manifest(smoke_run, tmp_path):
    out = report.write_report([str(smoke_run)], str(tmp_path / "report.html"))
    text = pathlib.Path(out).read_text(encoding="utf-8")
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"(src|href)=\"(?!data:)", text)
    assert "http://" not in text and "https://" not in text
    logged = {
        k
        for line in (smoke_run / "metrics.jsonl").read_text().splitlines()
        for k in json.loads(line)
    }
    images = _images(text)
    plotted = {k for k in images if not k.isdigit()}
    assert plotted == logged - {"step", "wall_time"}
    assert "steps_per_sec" in plotted and "g_loss" in plotted
    # The grids: every step's, the latest shown, the earlier ones behind the slider.
    assert [k for k in images if k.isdigit()] == ["3", "6"]
    with Image.open(smoke_run / "samples" / "step_6.png") as latest:
        assert images["6"].size == latest.size
    assert re.search(r'<img class="grid" data-step="6" [^>]*src=', text)
    assert re.search(r'<img class="grid" data-step="3" [^>]*hidden', text)
    assert 'type="range" min="0" max="1" value="1"' in text
    config = json.loads((smoke_run / "config.json").read_text())
    assert "config.json" in text and "manifest.json" in text
    assert f"step 6 of {config['train']['num_steps']}" in text
    assert "&quot;config_sha256&quot;" in text


def test_a_grid_still_being_written_is_left_out(smoke_run, tmp_path):
    run = _copy_run(smoke_run, tmp_path / "gan")
    latest = run / "samples" / "step_6.png"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    text = pathlib.Path(report.write_report([str(run)], str(tmp_path / "r.html"))).read_text()
    assert list(_images(text)).count("6") == 0
    assert re.search(r'<img class="grid" data-step="3" [^>]*src=', text)  # shown, not hidden
    assert not re.search(r'data-step="3" [^>]*hidden', text)


def test_two_runs_share_each_plot_and_eval_metrics_are_plotted(smoke_run, tmp_path):
    first = _copy_run(smoke_run, tmp_path / "gan_a")
    evals = [
        {"step": 3, "wall_time": 0.0, "eval/fid": 80.0},
        {"step": 6, "wall_time": 0.0, "eval/fid": 60.0},
    ]
    second = _copy_run(smoke_run, tmp_path / "gan_b", shift=0.5, eval_rows=evals)
    out = report.write_report([str(first), str(second)], str(tmp_path / "both.html"))
    text = pathlib.Path(out).read_text(encoding="utf-8")
    images = _images(text)
    assert re.search(r"background:#1f77b4\"></span>gan_a .*background:#ff7f0e\"></span>gan_b", text)
    # Both runs drawn in the same plot, each in its colour; eval/fid only by the second.
    assert _has_colour(images["g_loss"], TAB10["C0"]) and _has_colour(images["g_loss"], TAB10["C1"])
    assert _has_colour(images["eval/fid"], TAB10["C1"])
    assert not _has_colour(images["eval/fid"], TAB10["C0"])
    assert list(images).index("eval/fid") > list(images).index("steps_per_sec")  # losses first


def test_band_is_mean_and_sample_std_over_the_seeds_that_logged_each_step():
    steps, mean, std, n = report.band([{2: 1.0, 4: 3.0}, {2: 3.0, 4: 5.0}, {2: 2.0}])
    assert steps == [2, 4] and n == [3, 2]
    np.testing.assert_allclose(mean, [2.0, 4.0])
    np.testing.assert_allclose(std, [1.0, np.std([3.0, 5.0], ddof=1)])


def test_sweep_writes_the_study_report_with_a_band_per_metric(smoke_run, tmp_path):
    root = tmp_path / "study"
    for seed in (0, 1, 2):
        # Finished runs (their checkpoints are at num_steps), so the sweep trains nothing.
        _copy_run(smoke_run, root / f"seed_{seed}", shift=0.3 * seed)
    config = load_config("gan", "smoke")
    sweep.run_study(config, "configs/gan.py:smoke", [0, 1, 2], str(root))
    text = (root / "report.html").read_text(encoding="utf-8")
    assert "Finished runs (seeds): 0, 1, 2." in text  # study.md inside
    assert "study (mean ± std over 3 seeds)" in text  # the legend
    for seed in (0, 1, 2):
        assert f"<summary>seed_{seed}</summary>" in text
    images = _images(text)
    # The band: C0 at 25% over white, around the mean line.
    light = tuple(round(255 * 0.75 + c * 0.25) for c in TAB10["C0"])
    assert _has_colour(images["g_loss"], light, tolerance=8, at_least=200)
    assert _has_colour(images["g_loss"], TAB10["C0"])


def test_background_report_writes_the_page_off_the_training_thread(smoke_run, tmp_path):
    run = _copy_run(smoke_run, tmp_path / "gan")
    writer = report.BackgroundReport(str(run))
    writer.request()
    writer.close()
    assert 'data-step="6"' in (run / "report.html").read_text(encoding="utf-8")


def test_background_report_coalesces_requests_and_survives_a_failed_write(
    monkeypatch, tmp_path, caplog
):
    started, release, calls = threading.Event(), threading.Event(), []

    def slow_write(run_dirs, out_path):
        calls.append(out_path)
        started.set()
        release.wait(timeout=30)
        raise OSError("disk full")

    monkeypatch.setattr(report, "write_report", slow_write)
    logger = logging.getLogger("mmgen_jax")
    logger.addHandler(caplog.handler)
    try:
        writer = report.BackgroundReport(str(tmp_path))
        writer.request()
        assert started.wait(timeout=30)
        writer.request()  # while the first write runs: both remembered as one more write
        writer.request()
        release.set()
        writer.close()
    finally:
        logger.removeHandler(caplog.handler)
    assert calls == [str(tmp_path / "report.html")] * 2
    records = {id(r): r for r in caplog.records}.values()  # a record may arrive twice
    warnings = [r.getMessage() for r in records if "disk full" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on" in warnings[0]
    report.BackgroundReport(str(tmp_path), enabled=False).request()  # does nothing


def test_cli_writes_beside_the_run_and_names_a_bad_path(smoke_run, tmp_path):
    run = _copy_run(smoke_run, tmp_path / "gan")
    ok = subprocess.run(
        [sys.executable, "-m", "mmgen_jax.report", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (run / "report.html").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "mmgen_jax.report", str(tmp_path / "nowhere")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bad.returncode != 0
    last = bad.stderr.strip().splitlines()[-1]
    assert "nowhere is neither a run" in last and "--workdir" in last and "--root" in last


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium driven by the system's chromedriver (never a downloaded one);
    asked for before the smoke run, so a machine without one skips at once."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    binary = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip(
            "no headless browser here: `apt-get install chromium chromium-driver` "
            "(Debian; .ci/run does) to check the report in one"
        )
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


def _ink_fraction(png):
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.int32)
    return float((pixels.min(axis=-1) < 240).mean())


def test_report_renders_in_a_headless_browser_without_errors(browser, smoke_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    run = _copy_run(smoke_run, tmp_path / "gan")
    for seed in (0, 1):
        _copy_run(smoke_run, tmp_path / "study" / f"seed_{seed}", shift=0.2 * seed)
    out = report.write_report([str(run), str(tmp_path / "study")], str(tmp_path / "r.html"))
    # The console log is read for real: a page with an error shows it.
    browser.get("data:text/html,<script>notDefined()</script>")
    assert any(e["level"] == "SEVERE" for e in browser.get_log("browser"))

    browser.get(pathlib.Path(out).as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])"
    )
    assert images and all(done and width > 0 for done, width in images)
    plot = browser.find_element(By.CSS_SELECTOR, 'img.plot[data-metric="g_loss"]')
    assert plot.is_displayed() and _ink_fraction(plot.screenshot_as_png) > 0.03
    # The run's latest grid is shown; the slider brings back the earlier one.
    grids = browser.find_elements(By.CSS_SELECTOR, "section.source")[0]
    latest = grids.find_element(By.CSS_SELECTOR, 'img.grid[data-step="6"]')
    with Image.open(run / "samples" / "step_6.png") as png:
        assert browser.execute_script("return arguments[0].naturalWidth", latest) == png.width
    assert latest.is_displayed() and _ink_fraction(latest.screenshot_as_png) > 0.1
    slider = grids.find_element(By.CSS_SELECTOR, 'input[type="range"]')
    slider.send_keys(Keys.HOME)
    assert not latest.is_displayed()
    assert grids.find_element(By.CSS_SELECTOR, 'img.grid[data-step="3"]').is_displayed()
    assert grids.find_element(By.CSS_SELECTOR, ".step").text == "3"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_training_writes_the_runs_report(smoke_run):
    assert 'data-step="6"' in (smoke_run / "report.html").read_text(encoding="utf-8")
