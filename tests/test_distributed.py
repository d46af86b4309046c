"""When a job is multi-process (and how jax.distributed is told), on fake environments;
how many devices the host CPU is split into."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, load_config

from mmgen_jax import distributed


@pytest.mark.parametrize(
    "env",
    [
        {},  # a laptop
        # An sbatch script itself: the allocation has 8 tasks, but this is one process.
        {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8", "SLURM_PROCID": "0"},
        # srun with a single task
        {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"},
        {"TPU_WORKER_HOSTNAMES": "localhost"},  # a single-host TPU VM
        # explicit, but a single process
        {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"},
    ],
)
def test_single_process_environments_do_not_initialise(env):
    assert distributed.plan(env=env).reason is None


@pytest.mark.parametrize(
    "env, reason",
    [
        (
            {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4"},
            "SLURM job step (srun) with 4 tasks",
        ),
        ({"TPU_WORKER_HOSTNAMES": "w-0,w-1,w-2,w-3"}, "Cloud TPU slice with several workers"),
        ({"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476,10.0.0.2:8476"}, "Cloud TPU slice"),
    ],
)
def test_cluster_environments_let_jax_detect_the_rest(env, reason):
    plan = distributed.plan(env=env)
    assert plan.reason.startswith(reason)
    # JAX's own cluster detection supplies the coordinator, count and id.
    assert (plan.coordinator_address, plan.num_processes, plan.process_id) == (None, None, None)


def test_explicit_environment_and_flags():
    env = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert distributed.plan(env=env) == distributed.Plan(
        "explicit coordinator h0:1234", "h0:1234", 2, 1
    )
    # Flags win over the environment.
    plan = distributed.plan("auto", "h9:1", 4, 3, env=env)
    assert (plan.coordinator_address, plan.num_processes, plan.process_id) == ("h9:1", 4, 3)


def test_forced_and_disabled():
    srun = {"SLURM_STEP_NUM_TASKS": "4"}
    assert distributed.plan("off", env=srun).reason is None
    assert distributed.plan("on", env={}).reason == "--multihost=on"


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("auto", "h:1"), {}, "needs all three"),
        (("auto",), {"env": {"JAX_NUM_PROCESSES": "2"}}, "needs all three"),
        (("off", "h:1", 2, 0), {}, "contradicts"),
        (("sometimes",), {}, "use auto, on or off"),
    ],
)
def test_incomplete_or_contradictory_setups_are_clear_errors(args, kwargs, message):
    kwargs.setdefault("env", {})
    with pytest.raises(ValueError, match=message):
        distributed.plan(*args, **kwargs)


def test_deterministic_flags_are_appended_once():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    distributed.add_xla_flags(distributed.DETERMINISTIC_XLA_FLAGS, env)
    distributed.add_xla_flags(distributed.DETERMINISTIC_XLA_FLAGS, env)
    assert env["XLA_FLAGS"] == (
        "--xla_force_host_platform_device_count=4 --xla_gpu_deterministic_ops=true"
    )
    # A user's explicit choice of the same flag is kept.
    env = {"XLA_FLAGS": "--xla_gpu_deterministic_ops=false"}
    distributed.add_xla_flags(distributed.DETERMINISTIC_XLA_FLAGS, env)
    assert env["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=false"


def test_deterministic_flags_reach_the_backend_and_the_manifest():
    config = load_config("gan", "smoke")
    config.train.deterministic = True
    program = f"""
import jax, json, ml_collections
from mmgen_jax import distributed, writers
distributed.initialize(distributed.plan(), deterministic=True)
assert float(jax.jit(lambda x: x * 2)(1.0)) == 2.0  # XLA accepts the flags
config = ml_collections.ConfigDict(json.loads({config.to_json()!r}))
print(writers.manifest(config)["xla_flags"])
"""
    out = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "--xla_gpu_deterministic_ops=true" in out


@pytest.mark.parametrize(
    "requested, batch, kwargs, expected",
    [
        ("auto", 64, {"cores": 2}, 2),  # one device per core
        ("auto", 64, {"cores": 3}, 2),  # the largest count that divides the batch
        ("auto", 64, {"cores": 32}, distributed.MAX_AUTO_CPU_DEVICES),
        ("auto", 8, {"cores": 2}, None),  # 4 rows per device would be too few
        ("auto", 64, {"cores": 1}, None),
        ("auto", 64, {"cores": 2, "multi_process": True}, None),
        (
            "auto",
            64,
            {"cores": 2, "env": {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}},
            None,
        ),
        ("auto", 64, {"cores": 2, "env": {"JAX_NUM_CPU_DEVICES": "1"}}, None),
        (
            "4",
            64,
            {"cores": 2, "env": {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}},
            4,
        ),
        ("1", 64, {"cores": 2}, 1),
        ("auto", None, {"cores": 2}, None),  # sample/evaluate: no batch size, one device
        ("3", None, {"cores": 2}, 3),  # ... unless asked
    ],
)
def test_cpu_device_count(requested, batch, kwargs, expected):
    kwargs.setdefault("env", {})
    assert distributed.cpu_devices(requested, batch, **kwargs) == expected


@pytest.mark.parametrize(
    "requested, message",
    [("3", "does not divide train.batch_size=64"), ("0", "positive"), ("x", "positive")],
)
def test_bad_cpu_device_count_is_a_clear_error(requested, message):
    with pytest.raises(ValueError, match=message):
        distributed.cpu_devices(requested, 64, env={})


def test_cpu_device_count_overrides_xla_flags():
    program = """
import jax
from mmgen_jax import distributed
distributed.initialize(distributed.plan(env={}), num_cpu_devices=2)
print(jax.device_count())
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.split() == ["2"]
