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
    result = subprocess.run(
        ["bash", "launch/local.sh"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "launch/local.sh [--dry-run] CONFIG WORKDIR" in result.stderr


def _dry_run(script, *args):
    return subprocess.run(
        ["bash", script, "--dry-run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_tpu_vm_dry_run_runs_main_on_all_workers_with_multihost():
    out = _dry_run(
        "launch/tpu_vm.sh",
        "my-v4-32",
        "us-central2-b",
        "configs/gan.py",
        "/mnt/runs/x y",
        "--config.train.num_steps=20",
    )
    outer = shlex.split(out)
    assert outer[:7] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "my-v4-32",
        "--zone=us-central2-b",
    ]
    assert outer[7] == "--worker=all" and outer[8].startswith("--command=")
    # What each worker's shell runs: cd into the checkout, then the same main command.
    remote = shlex.split(outer[8].removeprefix("--command="))
    assert remote == [
        "cd",
        "mmgen_jax",
        "&&",
        "python3",
        "-m",
        "mmgen_jax.main",
        "--multihost=on",
        "--config=configs/gan.py",
        "--workdir=/mnt/runs/x y",
        "--config.train.num_steps=20",
    ]


def test_slurm_dry_run_starts_one_task_per_gpu_with_srun():
    out = _dry_run("launch/slurm.sbatch", "configs/gan.py", "runs/gan", "--config.seed=3")
    assert shlex.split(out) == [
        "srun",
        "--kill-on-bad-exit=1",
        "python",
        "-m",
        "mmgen_jax.main",
        "--config=configs/gan.py",
        "--workdir=runs/gan",
        "--config.seed=3",
    ]
    header = (ROOT / "launch" / "slurm.sbatch").read_text()
    # One process per GPU, and SIGTERM before the time limit so the run saves and exits.
    assert "#SBATCH --ntasks-per-node=8\n#SBATCH --gpus-per-node=8" in header
    assert "#SBATCH --signal=TERM@" in header and "#SBATCH --requeue" in header


def test_remote_launchers_without_arguments_print_usage():
    for script, usage in [
        ("launch/tpu_vm.sh", "launch/tpu_vm.sh [--dry-run] TPU_NAME ZONE CONFIG WORKDIR"),
        ("launch/slurm.sbatch", "sbatch launch/slurm.sbatch CONFIG WORKDIR"),
    ]:
        result = subprocess.run(
            ["bash", script], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert result.returncode == 2 and usage in result.stderr, script
