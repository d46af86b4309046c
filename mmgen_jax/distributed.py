"""Process-level setup before JAX starts its backend: multi-host init, CPU devices, XLA flags.

A job is multi-process when its launcher says so: an `srun` step with more than one task,
a GKE TPU slice (several TPU worker hostnames), explicit `JAX_COORDINATOR_ADDRESS` +
`JAX_NUM_PROCESSES`, or the `--multihost`/`--coordinator_address` flags of `main`. Only
then is `jax.distributed.initialize()` called; a plain single-process run never waits
for a coordinator. A Cloud TPU VM slice started with `gcloud ... ssh --worker=all` has no
such environment, so `launch/tpu_vm.sh` passes `--multihost=on` and JAX finds the
coordinator through the TPU metadata server.
"""

import dataclasses
import logging
import os

log = logging.getLogger("mmgen_jax")

# XLA flags that make GPU programs run bit-for-bit identically (no atomics-based
# reductions or scatters, autotuning restricted to deterministic kernels). XLA:CPU and
# TPU are deterministic already; the flags are ignored there.
DETERMINISTIC_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true",)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How to start: `reason` says why the job is multi-process (None: single process);
    the other fields are passed to `jax.distributed.initialize` (None: JAX detects them)."""

    reason: str | None = None
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _count(value):
    return int(value) if value not in (None, "") else None


def plan(
    mode="auto", coordinator_address=None, num_processes=None, process_id=None, env=None
) -> Plan:
    """Decides whether (and how) to initialise `jax.distributed`, from flags and `env`.

    mode: "auto" (detect from the environment), "on" (always; JAX reads the cluster's
    environment) or "off" (never, e.g. a plain `python` inside an `salloc` shell).
    Explicit coordinator/num_processes/process_id override the environment.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--multihost={mode!r}: use auto, on or off")
    env = os.environ if env is None else env
    explicit = (coordinator_address, num_processes, process_id)
    if mode == "off":
        if any(v is not None for v in explicit):
            raise ValueError(
                "--multihost=off contradicts --coordinator_address/--num_processes/"
                "--process_id: drop one or the other"
            )
        return Plan()
    address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else _count(env.get("JAX_NUM_PROCESSES"))
    index = process_id if process_id is not None else _count(env.get("JAX_PROCESS_ID"))
    if address is not None or count is not None or index is not None:
        if address is None or count is None or index is None:
            raise ValueError(
                "an explicit multi-process setup needs all three of the coordinator address, "
                "the number of processes and this process's id (flags --coordinator_address "
                "--num_processes --process_id, or env JAX_COORDINATOR_ADDRESS "
                f"JAX_NUM_PROCESSES JAX_PROCESS_ID); got address={address!r}, "
                f"num_processes={count!r}, process_id={index!r}"
            )
        if count > 1 or mode == "on":
            return Plan(f"explicit coordinator {address}", address, count, index)
        return Plan()
    if mode == "on":
        return Plan("--multihost=on")
    # srun sets SLURM_STEP_NUM_TASKS for the processes it starts; a batch script itself
    # has SLURM_NTASKS of the whole allocation but is one process, which must not wait.
    slurm_tasks = _count(env.get("SLURM_STEP_NUM_TASKS"))
    if slurm_tasks and slurm_tasks > 1:
        return Plan(f"SLURM job step (srun) with {slurm_tasks} tasks")
    tpu_hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in tpu_hosts.split(",") if h.strip()]) > 1:
        return Plan("Cloud TPU slice with several workers")
    return Plan()


# `--cpu_devices=auto` gives each core its own device up to this many, and never fewer
# than this many rows per device (BatchNorm statistics stay global, but tiny per-device
# batches would leave each core more collectives than arithmetic).
MAX_AUTO_CPU_DEVICES = 8
MIN_ROWS_PER_CPU_DEVICE = 8

CPU_DEVICES_HELP = (
    "How many JAX devices this host's CPU is split into for data parallelism: auto = one "
    "per core (at most 8) that divides train.batch_size, in a single-process run whose "
    "XLA_FLAGS/JAX_NUM_CPU_DEVICES do not already choose (sample/evaluate: one); N = exactly "
    "N. Ignored on GPU/TPU."
)


def cpu_devices(requested: str, batch_size: int, multi_process=False, env=None, cores=None):
    """How many devices to split the host CPU into (None: leave it to JAX, i.e. one, or
    what XLA_FLAGS / JAX_NUM_CPU_DEVICES ask for). `batch_size` None (commands that batch
    for themselves: sample, evaluate): only an explicit `requested` count splits.

    XLA:CPU splits each operation of a device's program over a shared thread pool, and
    small convolutions split poorly: on 2 cores a DCGAN-32 step runs 1.64x faster than on
    one as one device, 1.95x as two devices of half the batch each (docs/performance.md). The
    step computes the same function either way -- gradients and BatchNorm statistics are
    averaged over all devices -- up to floating-point summation order, so bit-for-bit
    comparisons need the same device count (recorded in the run's manifest).
    """
    env = os.environ if env is None else env
    if requested != "auto":
        try:
            n = int(requested)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--cpu_devices={requested!r}: use auto or a positive integer")
        if batch_size is not None and batch_size % n:
            raise ValueError(
                f"--cpu_devices={n} does not divide train.batch_size={batch_size}: choose a "
                f"divisor of the batch size, or auto"
            )
        return n
    explicit = "xla_force_host_platform_device_count" in env.get("XLA_FLAGS", "") or env.get(
        "JAX_NUM_CPU_DEVICES"
    )
    if explicit or multi_process or batch_size is None:
        return None
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    fits = [
        n
        for n in range(1, min(cores, MAX_AUTO_CPU_DEVICES) + 1)
        if batch_size % n == 0 and batch_size // n >= MIN_ROWS_PER_CPU_DEVICE
    ]
    return max(fits) if fits and max(fits) > 1 else None


def initialize(the_plan: Plan, deterministic: bool = False, num_cpu_devices: int | None = None):
    """Applies `the_plan`, the deterministic XLA flags if asked and the CPU device count
    (from `cpu_devices`). Must run before anything asks JAX for devices; safe to call on a
    single process."""
    if deterministic:
        add_xla_flags(DETERMINISTIC_XLA_FLAGS)
    import jax

    if num_cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", num_cpu_devices)
    if the_plan.reason is None:
        return

    # CPU processes need a cross-process collectives backend (GPU/TPU bring their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    log.info("Multi-process job (%s): initialising jax.distributed.", the_plan.reason)
    jax.distributed.initialize(
        coordinator_address=the_plan.coordinator_address,
        num_processes=the_plan.num_processes,
        process_id=the_plan.process_id,
    )


def add_xla_flags(flags, env=None):
    """Appends `flags` to XLA_FLAGS unless already there (XLA reads it at backend start)."""
    env = os.environ if env is None else env
    current = env.get("XLA_FLAGS", "").split()
    names = {f.split("=")[0] for f in current}
    added = [f for f in flags if f.split("=")[0] not in names]
    env["XLA_FLAGS"] = " ".join(current + added)
