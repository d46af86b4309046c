"""Seed studies: a 3-seed sweep of the smoke config, its table, skipping finished runs,
and the commands it submits to a cluster."""

import csv
import json
import logging
import shlex
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from mmgen_jax import sweep


def test_three_seed_smoke_study_writes_its_table_and_skips_finished_runs(
    tmp_path, smoke_config, caplog
):
    smoke_config.train.num_steps = 2
    root = tmp_path / "study"
    table = sweep.run_study(smoke_config, "configs/gan.py:smoke", [0, 1, 2], str(root))

    finals = []
    for seed in (0, 1, 2):
        config = json.loads((root / f"seed_{seed}" / "config.json").read_text())
        assert config["seed"] == seed
        with open(root / f"seed_{seed}" / "metrics.jsonl") as f:
            finals.append(json.loads(f.readlines()[-1])["g_loss"])
    assert len(set(finals)) == 3  # the seeds made different runs
    g_loss = next(row for row in table if row["metric"] == "g_loss")
    assert g_loss["n"] == 3 and g_loss["best"] == "min"
    np.testing.assert_allclose(g_loss["final_mean"], np.mean(finals))
    np.testing.assert_allclose(g_loss["final_std"], np.std(finals, ddof=1))
    assert {row["metric"] for row in table}.isdisjoint(sweep.NOT_METRICS)

    with open(root / "study.csv") as f:
        rows = {row["metric"]: row for row in csv.DictReader(f)}
    assert float(rows["g_loss"]["final_mean"]) == pytest.approx(np.mean(finals))
    md = (root / "study.md").read_text()
    assert "Finished runs (seeds): 0, 1, 2." in md
    assert f"| g_loss | {np.mean(finals):.4g} ± {np.std(finals, ddof=1):.2g} |" in md

    # Running it again trains nothing: every run is finished.
    caplog.set_level("INFO", logger="mmgen_jax")
    logger = logging.getLogger("mmgen_jax")
    logger.addHandler(caplog.handler)  # seen even where the CLI's setup stops propagation
    try:
        sweep.run_study(smoke_config, "configs/gan.py:smoke", [0, 1, 2], str(root))
    finally:
        logger.removeHandler(caplog.handler)
    messages = {r.getMessage() for r in caplog.records}  # a record may arrive twice
    assert len([m for m in messages if "finished in" in m]) == 3
    assert not any("Training" in m for m in messages)


def test_final_and_best_per_metric(tmp_path):
    rows = [
        {"step": 1, "wall_time": 5.0, "g_loss": 3.0, "steps_per_sec": 9.0},
        {"step": 2, "wall_time": 6.0, "g_loss": 1.0, "eval/fid": 40.0, "eval/digit_acc": 0.5},
        {"step": 3, "wall_time": 7.0, "g_loss": 2.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = sweep.run_summary(str(tmp_path))
    # final: the last row that has the metric; best: min, or max where higher is better.
    assert summary == {"g_loss": (2.0, 1.0), "eval/fid": (40.0, 40.0), "eval/digit_acc": (0.5, 0.5)}
    table = sweep.aggregate([summary, {"g_loss": (4.0, 0.0)}])
    by = {row["metric"]: row for row in table}
    assert by["g_loss"]["final_mean"] == 3.0 and by["g_loss"]["n"] == 2
    assert by["eval/digit_acc"]["best"] == "max" and by["eval/fid"]["best"] == "min"
    assert by["eval/fid"]["n"] == 1 and by["eval/fid"]["final_std"] is None


def test_slurm_dry_run_prints_one_job_per_unfinished_seed(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmgen_jax.sweep",
            "--config=configs/gan.py:smoke",
            "--seeds=4,5",
            f"--root={tmp_path}",
            "--launcher=slurm",
            "--dry_run",
            "--config.train.num_steps=50",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert commands == [
        [
            "sbatch",
            f"--job-name=seed_{seed}",
            "launch/slurm.sbatch",
            "configs/gan.py:smoke",
            str(tmp_path / f"seed_{seed}"),
            f"--config.seed={seed}",
            "--config.train.num_steps=50",
        ]
        for seed in (4, 5)
    ]
    assert "Unfinished, not counted: 4, 5." in (tmp_path / "study.md").read_text()
