"""Launch scripts: their --dry-run prints the exact command they would run."""

import shlex
import subprocess

from conftest import ROOT


def test_local_dry_run_prints_the_main_command():
    out = subprocess.run(
        [
            "bash",
            "launch/local.sh",
            "--dry-run",
            "configs/gan.py:smoke",
            "runs/x y",
            "--config.train.num_steps=20",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shlex.split(out) == [
        "python",
        "-m",
        "mmgen_jax.main",
        "--config=configs/gan.py:smoke",
        "--workdir=runs/x y",
        "--config.train.num_steps=20",
    ]


def test_local_without_arguments_prints_usage():
    result = subprocess.run(["bash", "launch/local.sh"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "launch/local.sh [--dry-run] CONFIG WORKDIR" in result.stderr
