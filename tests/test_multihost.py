"""Two real processes on CPU (gloo, 2 devices each) against one process with 4 devices:
same metrics, checkpoints that move between the two layouts, and a multi-process SIGTERM
that stops both processes at the same step through Orbax's preemption sync point."""

import os
import signal
import socket
import subprocess
import time

import numpy as np
from conftest import ROOT
from test_train import _main_command, _metrics

from mmgen_jax import train


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_devices(xla_flags):
    """The test process's XLA flags (conftest.py's), with 2 CPU devices instead of 4."""
    kept = [f for f in xla_flags.split() if "host_platform_device_count" not in f]
    return " ".join([*kept, "--xla_force_host_platform_device_count=2"])


def _start_two_processes(workdir, data_dir, logs, *overrides):
    """`python -m mmgen_jax.main` as processes 0 and 1 of a 2-process job."""
    port = _free_port()
    procs = []
    for index in range(2):
        env = {
            **os.environ,
            "XLA_FLAGS": _two_devices(os.environ.get("XLA_FLAGS", "")),
            "JAX_PLATFORMS": "cpu",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(index),
        }
        cmd = _main_command(workdir, data_dir, *overrides)
        with open(logs / f"process_{index}.log", "w") as log:  # the child keeps its copy
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=log, stdout=log))
    return procs


def _wait_all(procs, logs, timeout=300):
    codes = [p.wait(timeout=timeout) for p in procs]
    text = [(logs / f"process_{i}.log").read_text() for i in range(len(procs))]
    return codes, text


def _wait_for(path, needle, procs, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and needle in path.read_text():
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a process ended before {needle!r}:\n{path.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {needle!r} in {path} after {timeout} s")


def _assert_rows_close(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        np.testing.assert_allclose([ra[k] for k in ra], [rb[k] for k in ra], rtol=1e-5, atol=1e-6)


def test_two_processes_match_one_share_checkpoints_and_stop_together(
    tmp_path, smoke_config, data_dir
):
    logs = tmp_path / "logs"
    logs.mkdir()
    mixed, one = tmp_path / "mixed", tmp_path / "one"
    smoke_config.train.log_every = 1  # a row per step: rows compare whatever step SIGTERM hits
    smoke_config.train.checkpoint_every = 2

    # 1 process x 4 devices writes the checkpoint of step 2 ...
    smoke_config.train.num_steps = 2
    train.train_and_evaluate(smoke_config, str(mixed))
    # ... which 2 processes x 2 devices continue until both get SIGTERM (as SLURM sends it to
    # every task): they agree on a step through the preemption sync point, save, exit 0.
    procs = _start_two_processes(
        mixed,
        data_dir,
        logs,
        "--config.train.num_steps=100000",
        "--config.train.checkpoint_every=2",
        "--config.train.log_every=1",
    )
    _wait_for(logs / "process_0.log", "step 5/", procs)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    codes, text = _wait_all(procs, logs, timeout=120)
    assert codes == [0, 0], text[0][-3000:] + text[1][-3000:]
    assert "Resumed from checkpoint at step 2" in text[0]
    assert "4 devices (2 processes)" in text[0]
    stopped = [
        [int(ln.split("saved step ")[1].split(";")[0]) for ln in t.splitlines() if "Stop req" in ln]
        for t in text
    ]
    assert len(stopped[0]) == 1 and stopped[0] == stopped[1]  # the same step on both
    saved = stopped[0][0]
    assert saved >= 5 and (mixed / "checkpoints" / str(saved)).is_dir()

    # The 2-process checkpoint continues in 1 process, to 2 steps past it.
    smoke_config.train.num_steps = saved + 2
    train.train_and_evaluate(smoke_config, str(mixed))
    # The same steps in 1 process throughout: equal up to float reassociation.
    train.train_and_evaluate(smoke_config, str(one))
    _assert_rows_close(_metrics(mixed), _metrics(one))
