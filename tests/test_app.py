"""The start-up every command shares (mmgen_jax/app.py): each command's flags and start-up
in-process, the config checks' one-line errors, --verbose, quiet logs, and `sweep` starting
exactly as `main` does."""

import errno
import json
import os
import re
import subprocess
import sys

import commands
import ml_collections
import pytest
from conftest import ROOT, load_config

from mmgen_jax import (
    app,
    benchmark,
    config_checks,
    distributed,
    evaluate,
    main,
    sample,
    sweep,
    train,
)
from mmgen_jax.evaluation import attribute_judge, caption_judge

SMOKE = "--config=configs/gan.py:smoke"


@pytest.fixture(autouse=True)
def _restore_logging():
    """Commands run in-process here configure logging: put back as it was after each test."""
    with commands.restored_logging():
        yield


@pytest.fixture
def started(monkeypatch):
    """Records what `distributed.initialize` and `train.train_and_evaluate` are called
    with, instead of starting JAX again or training."""
    calls = {"initialize": [], "train": []}
    monkeypatch.setattr(
        distributed, "initialize", lambda *a, **k: calls["initialize"].append((a, k))
    )
    monkeypatch.setattr(
        train, "train_and_evaluate", lambda config, workdir: calls["train"].append(workdir)
    )
    return calls


def test_sweep_local_starts_exactly_as_main(tmp_path, started):
    flags = ["--cpu_devices=2", "--config.train.deterministic=True", "--multihost=off"]
    app.run(main.main, main.FLAGS, ["main", SMOKE, f"--workdir={tmp_path / 'run'}", *flags])
    app.run(
        sweep.main,
        sweep.FLAGS,
        ["sweep", SMOKE, f"--root={tmp_path / 'study'}", "--seeds=0", *flags],
    )
    by_main, by_sweep = started["initialize"]
    assert by_main == by_sweep
    assert by_main == ((distributed.Plan(),), {"deterministic": True, "num_cpu_devices": 2})
    assert started["train"] == [str(tmp_path / "run"), str(tmp_path / "study" / "seed_0")]


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory, data_dir):
    """A local sweep of one smoke run (2 steps, a checkpoint at step 2, no sample grids)
    started as a user would: a new process without the tests' forced device count (XLA_FLAGS
    keeps only the tests' optimisation level, which leaves the split alone)."""
    root = tmp_path_factory.mktemp("study")
    flags = os.environ["XLA_FLAGS"].split()
    xla_flags = " ".join(f for f in flags if "xla_force_host_platform_device_count" not in f)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmgen_jax.sweep",
            SMOKE,
            f"--root={root}",
            "--seeds=0",
            f"--config.data.data_dir={data_dir}",
            "--config.train.batch_size=16",
            "--config.train.num_steps=2",
            "--config.train.checkpoint_every=2",
            "--config.train.sample_every=0",
        ],
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": xla_flags},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_sweep_local_trains_on_mains_cpu_split(sweep_root):
    """Without the forced device count, `auto` splits the CPU as `main` does."""
    manifest = json.loads((sweep_root / "seed_0" / "manifest.json").read_text())
    assert manifest["device_count"] == (distributed.cpu_devices("auto", 16, env={}) or 1)


@pytest.mark.parametrize(
    "override, line",
    [
        (
            "--config.train.loss=wgan",
            "config.train.loss='wgan': use one of 'hinge', 'nonsaturating'",
        ),
        ("--config.train.sample_every=-1", "config.train.sample_every=-1: must be >= 0 (0 = off)"),
        ("--config.train.batch_size=0", "config.train.batch_size=0: must be >= 1"),
        ("--config.train.max_to_keep=0", "config.train.max_to_keep=0: must be >= 1"),
        ("--config.train.num_steps=-5", "config.train.num_steps=-5: must be >= 0"),
        (
            "--config.model.d_norm=layer",
            "config.model.d_norm='layer': use one of 'batch', 'spectral'",
        ),
        (
            "--config.model.text_encoder=lstm",
            "config.model.text_encoder='lstm': use one of 'transformer', 'conv', 'none'",
        ),
        ("--config.eval.best_mode=up", "config.eval.best_mode='up': use one of 'min', 'max'"),
        ("--config=configs/nope.py", "--config: [Errno 2] No such file or directory"),
        ("--config=configs/gan.py:nope", "unknown variant 'nope' of configs/gan.py"),
        ("--config.train.no_such_field=3", "config has no field 'no_such_field'"),
        ("--config.train.num_steps=many", "flag --config.train.num_steps=many: invalid literal"),
        ("--cpu_devices=3", "--cpu_devices=3 does not divide train.batch_size=8"),
    ],
)
def test_bad_config_is_one_line_before_anything_starts(tmp_path, started, override, line):
    argv = [SMOKE, f"--workdir={tmp_path}", override]
    fatal = commands.fatal_lines(main, *argv)
    assert len(fatal) == 1 and fatal[0].startswith(f"FATAL: {line}"), fatal
    assert started["train"] == [] and started["initialize"] == []


def test_every_config_problem_gets_its_own_line(tmp_path, started):
    argv = [
        "--config=configs/vae.py:smoke",
        f"--workdir={tmp_path}",
        "--config.model.fusion=sum",
        "--config.model.joint_prior=learned",
        "--config.train.image_likelihood=cauchy",
        "--config.model.joint_mixture_components=0",
        "--config.train.log_every=0",  # 0 = off: valid
        "--config.train.checkpoint_every=-3",
    ]
    assert commands.fatal_lines(main, *argv) == [
        "FATAL: config.model.fusion='sum': use one of 'poe', 'moe'",
        "FATAL: config.model.joint_prior='learned': use one of 'standard', 'mixture'",
        "FATAL: config.train.image_likelihood='cauchy': use one of 'gaussian', 'laplace'",
        "FATAL: config.model.joint_mixture_components=0: must be >= 1",
        "FATAL: config.train.checkpoint_every=-3: must be >= 0 (0 = off)",
    ]


def test_every_field_must_be_an_integer():
    fields = load_config("evaluator", "smoke").to_dict()
    fields["train"]["eval_every"] = 2.5  # as a hand-edited config.json may have it
    assert config_checks.problems(ml_collections.ConfigDict(fields)) == [
        "config.train.eval_every=2.5: must be an integer >= 0 (0 = off)"
    ]


def test_sweep_checks_the_config_before_submitting(tmp_path, started):
    argv = [SMOKE, f"--root={tmp_path}", "--launcher=slurm", "--dry_run"]
    fatal = commands.fatal_lines(sweep, *argv, "--config.train.update_order=random")
    assert fatal == [
        "FATAL: config.train.update_order='random': use one of 'alternating', 'simultaneous'"
    ]


def test_benchmark_starts_through_the_same_checks(started):
    fatal = commands.fatal_lines(benchmark, SMOKE, "--config.model.g_impl=slow")
    assert fatal == ["FATAL: config.model.g_impl='slow': use one of 'fast', 'textbook'"]
    fatal = commands.fatal_lines(benchmark, "--config=configs/gan.py:dcgan32", "--cpu_devices=5")
    assert fatal == [
        (
            "FATAL: --cpu_devices=5 does not divide train.batch_size=64: choose a divisor of "
            "the batch size, or auto"
        )
    ]


def test_missing_flags_and_arguments_are_one_line(tmp_path):
    assert commands.fatal_lines(main, SMOKE) == ["FATAL: --workdir is required: see --help"]
    assert commands.fatal_lines(evaluate, "--nope=1") == ["FATAL: unknown flag --nope: see --help"]
    assert commands.fatal_lines(caption_judge, f"--samples_dir={tmp_path}", "extra") == [
        "FATAL: unexpected arguments: extra"
    ]


@pytest.mark.parametrize("command", [evaluate, sample])
def test_missing_workdir_is_one_line_and_verbose_raises(tmp_path, command):
    argv = [f"--workdir={tmp_path / 'nope'}"]
    if command is sample:
        argv += ["--caption=a red seven", f"--out={tmp_path / 'grid.png'}"]
    (fatal,) = commands.fatal_lines(command, *argv)
    assert str(tmp_path / "nope") in fatal
    with pytest.raises((FileNotFoundError, ValueError)):
        app.run(command.main, command.FLAGS, ["prog", *argv, "--verbose"])


def test_judges_read_their_folder_or_say_why_not(tmp_path):
    for judge in (caption_judge, attribute_judge):
        (fatal,) = commands.fatal_lines(judge, f"--samples_dir={tmp_path / 'none'}")
        assert "No such file or directory" in fatal and "index.jsonl" in fatal
    reference = "a red handwritten seven on a blue background"
    row = {"file": "000000.png", "caption": reference, "reference": reference}
    (tmp_path / "index.jsonl").write_text(json.dumps(row) + "\n")
    out, _ = commands.run(caption_judge, f"--samples_dir={tmp_path}")
    assert json.loads(out) == {
        "n": 1,
        "well_formed": 1.0,
        "label": 1.0,
        "fg": 1.0,
        "bg": 1.0,
        "all": 1.0,
    }


def _library_lines(stderr):
    """Lines of stderr that libraries logged: Python/absl logging, XLA's C++ log
    ("I1203 08:37:01.679391 26060 pjrt_client.cc:579] ...")."""
    noise = ("INFO", "WARNING:", "absl", "orbax")
    cpp_log = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")
    return [
        line for line in stderr.splitlines() if any(n in line for n in noise) or cpp_log.match(line)
    ]


def test_sample_run_is_quiet_and_verbose_shows_tracebacks(tmp_path, sweep_root):
    """A new process: its stderr holds no library log lines, an error is one FATAL line;
    with --verbose the error is raised (a traceback) instead."""
    run_dir = sweep_root / "seed_0"

    def sample_cmd(*args):
        return subprocess.run(
            [sys.executable, "-m", "mmgen_jax.sample", f"--workdir={run_dir}", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    grid = tmp_path / "grid.png"
    result = sample_cmd("--caption=a red handwritten seven", f"--out={grid}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert grid.exists() and f"wrote {grid}" in result.stdout
    assert _library_lines(result.stderr) == [], result.stderr

    missing = ["--step=5", "--caption=x", f"--out={grid}"]  # the run has steps 2 only
    result = sample_cmd(*missing)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line] == [
        line for line in result.stderr.splitlines() if line.startswith("FATAL: ")
    ]
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises((FileNotFoundError, ValueError)):
        app.run(
            sample.main, sample.FLAGS, ["sample", f"--workdir={run_dir}", *missing, "--verbose"]
        )


def test_help_lists_the_commands_and_shared_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        app.run(main.main, main.FLAGS, ["main", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("Train a model: python -m mmgen_jax.main")
    for flag in ("--workdir", "--config", "--[no]verbose", "--cpu_devices", "--multihost"):
        assert flag in out


@pytest.mark.parametrize(
    "error, line",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/runs/r/checkpoints"),
            "FATAL: [Errno 28] No space left on device: '/runs/r/checkpoints'",
        ),
        (
            PermissionError(errno.EROFS, "Read-only file system", "/runs/r/config.json"),
            "FATAL: [Errno 30] Read-only file system: '/runs/r/config.json'",
        ),
        (
            FloatingPointError("non-finite d_loss at step 8:\n  lower the learning rates"),
            "FATAL: non-finite d_loss at step 8: lower the learning rates",
        ),
    ],
)
def test_what_a_user_can_cause_in_training_is_one_line(tmp_path, monkeypatch, started, error, line):
    def fails(config, workdir):
        raise error

    monkeypatch.setattr(train, "train_and_evaluate", fails)
    assert commands.fatal_lines(main, SMOKE, f"--workdir={tmp_path}") == [line]


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch, started):
    def fails(config, workdir):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train, "train_and_evaluate", fails)
    with pytest.raises(RuntimeError, match="a bug"):
        app.run(main.main, main.FLAGS, ["main", SMOKE, f"--workdir={tmp_path}"])


def test_no_command_starts_jax_when_imported():
    """The device split and jax.distributed must come first: importing a command (and so
    every family, model and metric) must not start a JAX backend."""
    program = (
        "from jax._src import xla_bridge\n"
        "import mmgen_jax.main, mmgen_jax.sample, mmgen_jax.evaluate, mmgen_jax.sweep\n"
        "import mmgen_jax.benchmark, mmgen_jax.report, mmgen_jax.fid\n"
        "assert not xla_bridge.backends_are_initialized()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
