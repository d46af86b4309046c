"""Test setup: JAX on CPU with 4 fake devices, set before JAX is imported."""

import os

# The tests are compile-bound: their programs are smoke-sized. Optimisation level 0 (LLVM)
# and XLA:CPU's older element-wise emitters instead of its MLIR fusion emitters compile a
# smoke train step ~2x faster (GAN 4.7 -> 2.3 s) and run it no slower at these sizes. Results
# agree with the default flags to rounding, not bit for bit; tests only compare runs made
# under the same flags (subprocesses inherit them).
os.environ["XLA_FLAGS"] = " ".join(
    [
        os.environ.get("XLA_FLAGS", ""),
        "--xla_force_host_platform_device_count=4",
        "--xla_backend_optimization_level=0",
        "--xla_cpu_use_fusion_emitters=false",
        "--xla_cpu_parallel_codegen_split_count=1",
    ]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No Python source locations in the lowered programs: ~7% less lowering and compiling, and
# no test reads them (tracebacks of errors are unaffected).
os.environ.setdefault("JAX_TRACEBACK_IN_LOCATIONS_LIMIT", "0")
# Many tests (and the subprocesses they start) compile the same smoke-sized programs:
# a persistent compilation cache makes every compile after the first a file read.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.environ.get("TMPDIR", "/tmp"), "mmgen_jax_test_jax_cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import importlib.util
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name="gan", arg="smoke"):
    """configs/<name>.py's get_config(arg), as `--config=configs/<name>.py:<arg>` does."""
    spec = importlib.util.spec_from_file_location(
        f"configs_{name}", ROOT / "configs" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, worker_id):
    """A TFDS data_dir with the embedded digits_captions dataset prepared once per test run:
    pytest-xdist workers share it (preparation is safe to run concurrently)."""
    from mmgen_jax.data import prepare

    root = tmp_path_factory.getbasetemp()
    path = (root.parent if worker_id != "master" else root) / "tfds_shared"
    path.mkdir(exist_ok=True)
    prepare.ensure_prepared("digits_captions", str(path))
    return str(path)


@pytest.fixture
def smoke_config(data_dir):
    config = load_config("gan", "smoke")
    config.data.data_dir = data_dir
    return config


@pytest.fixture(scope="session")
def two_step_run(tmp_path_factory, data_dir):
    """(workdir, final state) of a finished 2-step GAN smoke run, made once per worker.
    Read it, or continue a copy of it (`copy_run`); never write into it."""
    from mmgen_jax import train

    config = load_config("gan", "smoke")
    config.data.data_dir = data_dir
    config.train.num_steps = 2
    workdir = tmp_path_factory.mktemp("two_step_run")
    return workdir, train.train_and_evaluate(config, str(workdir))


def copy_run(run_dir, workdir):
    """A copy of the run in `run_dir` at `workdir` (a path that may exist, empty)."""
    shutil.copytree(run_dir, workdir, dirs_exist_ok=True)
    return workdir


def run_command(command, *argv):
    """Runs a command module (mmgen_jax.main, .sample, ...) in-process with `argv`, as
    `python -m` would; a user error ends in SystemExit(1), with its FATAL line on stderr.
    Use with the `restore_logging` fixture."""
    from mmgen_jax import app

    return app.run(command.main, command.FLAGS, [command.__name__, *argv])


@pytest.fixture
def restore_logging():
    """Logging as it was before the test, whatever the commands it ran in-process set."""
    from commands import restored_logging

    with restored_logging():
        yield
