"""Train a model: python -m mmgen_jax.main --config=configs/gan.py --workdir=runs/gan

Re-running the same command resumes from the latest checkpoint in --workdir.
Multi-process jobs (srun, a TPU slice) run the same command in every process; see
mmgen_jax/distributed.py for when `jax.distributed` is initialised.
Override config fields with --config.train.num_steps=200; pick variants with
--config=configs/gan.py:smoke.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from mmgen_jax import distributed, train, writers

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (get_config(arg)).", lock_config=True
)
flags.DEFINE_string("workdir", None, "The run's directory: checkpoints, metrics, samples.")
flags.DEFINE_enum(
    "multihost",
    "auto",
    ["auto", "on", "off"],
    "Initialise jax.distributed: auto = when the environment is a multi-process job "
    "(srun with several tasks, a GKE TPU slice, JAX_COORDINATOR_ADDRESS); on = always "
    "(Cloud TPU VM slices); off = never.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit setup).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit setup).")
flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")
flags.DEFINE_string("cpu_devices", "auto", distributed.CPU_DEVICES_HELP)
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl parsing, with a one-line answer for a config override that names no field."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as e:
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        sys.exit(
            f"FATAL: config has no field {e} (overrides given: {', '.join(overrides)}). "
            f"Fields and their meaning are listed in the config file."
        )
    except ValueError as e:  # e.g. an unknown variant in --config=FILE:VARIANT
        sys.exit(f"FATAL: {e}")
    except flags.Error as e:
        # A config file that raised is reported with its traceback inside the message;
        # its last line is the cause.
        sys.exit(f"FATAL Flags parsing error: {str(e).strip().splitlines()[-1]}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    writers.configure_logging()
    try:
        plan = distributed.plan(
            FLAGS.multihost, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
        cpu_devices = distributed.cpu_devices(
            FLAGS.cpu_devices, FLAGS.config.train.batch_size, multi_process=plan.reason is not None
        )
    except ValueError as e:
        sys.exit(f"FATAL: {e}")
    distributed.initialize(
        plan,
        deterministic=FLAGS.config.train.get("deterministic", False),
        num_cpu_devices=cpu_devices,
    )
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
