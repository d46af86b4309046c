"""The one start-up every command shares: flags, logging, the distributed plan, the CPU
device split, determinism flags and one-line errors.

A command owns its flags in its own absl `FlagValues` (`FLAGS = app.flag_values()`, which
also defines the shared flags below), so importing several commands never clashes and tests
can run them in-process. It ends with `app.run(main, FLAGS)`; its `main(argv)` calls
`app.start(FLAGS, ...)` before it touches JAX. `main` and `sweep --launcher=local` both start
through `start(FLAGS, config=...)`: same config checks, same device split, same XLA flags.

Errors a user can cause (bad flags or config, missing files, a full or read-only disk, NaN
losses) end as `FATAL: <one line>` and exit code 1; `--verbose` shows the traceback instead
(and the libraries' INFO logs).
"""

import os
import re
import sys

from absl import app as absl_app
from absl import flags
from ml_collections import config_flags

from mmgen_jax import distributed, writers

UsageError = absl_app.UsageError

# What a user can cause; anything else is a bug and keeps its traceback.
USER_ERRORS = (UsageError, ValueError, OSError, FloatingPointError)

HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")


def flag_values(devices=True) -> flags.FlagValues:
    """A command's own flags with the shared ones defined: --verbose, and with `devices` the
    distributed plan's and the CPU split's flags (commands that never start JAX omit them)."""
    fv = flags.FlagValues()
    flags.DEFINE_bool(
        "verbose",
        False,
        "Show the traceback of an error (instead of one FATAL line) and the libraries' INFO logs.",
        flag_values=fv,
    )
    if not devices:
        return fv
    flags.DEFINE_enum(
        "multihost",
        "auto",
        ["auto", "on", "off"],
        "Initialise jax.distributed: auto = when the environment is a multi-process job "
        "(srun with several tasks, a GKE TPU slice, JAX_COORDINATOR_ADDRESS); on = always "
        "(Cloud TPU VM slices); off = never.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (explicit setup).", flag_values=fv
    )
    flags.DEFINE_integer(
        "num_processes", None, "Number of processes (explicit setup).", flag_values=fv
    )
    flags.DEFINE_integer(
        "process_id", None, "This process's id in [0, num_processes).", flag_values=fv
    )
    flags.DEFINE_string("cpu_devices", "auto", distributed.CPU_DEVICES_HELP, flag_values=fv)
    return fv


def define_config(fv, help_string="Experiment config file (get_config(arg)); FILE:VARIANT."):
    """The required `--config=FILE[:VARIANTS]` flag, overridable field by field."""
    config_flags.DEFINE_config_file("config", None, help_string, flag_values=fv, lock_config=True)
    flags.mark_flag_as_required("config", flag_values=fv)


def define_sampling(fv):
    """--guidance, --sample_steps, --sampler: the sampling-time model fields a command may
    change for one load of a run (`runs.SAMPLING_FIELDS`; flow runs have them)."""
    flags.DEFINE_float(
        "guidance", None, "Classifier-free guidance scale (default: the run's).", flag_values=fv
    )
    flags.DEFINE_integer("sample_steps", None, "ODE steps (default: the run's).", flag_values=fv)
    flags.DEFINE_string(
        "sampler", None, "ODE solver, euler or heun (default: the run's).", flag_values=fv
    )


def sampling(fv):
    """{field: value or None} of the flags `define_sampling` defined, for `runs.load_run`."""
    from mmgen_jax import runs  # the model code only once a command loads a run

    return {name: fv[name].value for name in runs.SAMPLING_FIELDS}


def parse_flags(fv, argv, doc=""):
    """Parses `argv` into `fv` (afresh: a second call forgets the first's values); a bad
    flag or config override ends in one FATAL line. Returns the positional arguments
    (argv[0] first), as absl does. `doc`: the command's --help text."""
    if any(a in HELP_FLAGS for a in argv[1:]):
        print(f"{(doc or '').strip()}\n\nFlags:\n{fv.get_help()}")
        raise SystemExit(0)
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    if fv.is_parsed():  # a second run in one process (tests)
        fv.unparse_flags()
        for name in [n for n in fv if n.startswith("config.")]:
            delattr(fv, name)  # config_flags defines one flag per override at parse time
    try:
        rest = fv(argv)
        if "config" in fv:
            fv.config.keys()  # a config file that failed to load raises here
        return rest
    except (AttributeError, KeyError, flags.Error, OSError, ValueError) as e:
        if "--verbose" in argv:
            raise
        fail(_parsing_problem(e, overrides))


def _parsing_problem(e, overrides):
    """What went wrong in parsing, said for a user in one line."""
    if isinstance(e, AttributeError | KeyError):  # an override naming no field
        while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError(name))
            e = e.args[0]
        field = e.args[0] if e.args else e
        return (
            f"config has no field {field} (overrides given: {', '.join(overrides)}). "
            "Fields and their meaning are listed in the config file."
        )
    if isinstance(e, flags.UnrecognizedFlagError):
        if e.flagname.startswith("config."):
            return (
                f"config has no field {e.flagname.removeprefix('config.')!r}: fields and "
                "their meaning are listed in the config file"
            )
        return f"unknown flag --{e.flagname}: see --help"
    if isinstance(e, flags.IllegalFlagValueError):
        missing = re.match(r"flag --(\S+)=None: Flag --\S+ must have a value other", str(e))
        if missing:
            return f"--{missing[1]} is required: see --help"
        # A config file that raised is reported with its traceback inside the message;
        # its last line is the cause.
        return re.sub(r"^\w+(Error|Exception): ", "", str(e).strip().splitlines()[-1])
    if isinstance(e, OSError):  # ml_collections: the config file could not be read
        return f"--config: {str(e).strip().splitlines()[-1].strip()}"
    return str(e)  # e.g. an unknown variant in --config=FILE:VARIANT


def fail(error):
    """Ends the process with one `FATAL: ...` line per problem on stderr, exit code 1."""
    problems = getattr(error, "problems", None) or [" ".join(str(error).split())]
    for line in problems:
        print(f"FATAL: {line}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def run(main, fv, argv=None):
    """Parses the flags, configures logging and runs `main(argv)`; errors a user can cause
    end in `fail` unless --verbose. With `argv` (tests run commands in-process) sys.argv is
    `argv` meanwhile: config_flags reads the config overrides there."""
    argv = list(sys.argv if argv is None else argv)
    if not flags.FLAGS.is_parsed():  # absl logging asks; the command's flags live in `fv`
        flags.FLAGS.mark_as_parsed()
    saved_argv, sys.argv = sys.argv, argv
    try:
        rest = parse_flags(fv, argv, sys.modules[main.__module__].__doc__)
        # XLA's C++ INFO lines: read when the backend starts, which is later (in `start`).
        # A value the user exported wins.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if fv.verbose else "1")
        writers.configure_logging(verbose=fv.verbose)
        if len(rest) > 1:
            raise UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
        return main(rest)
    except USER_ERRORS as e:
        if fv.verbose:
            raise
        fail(e)
    finally:
        sys.argv = saved_argv


def start(fv, config=None, batch_size=None):
    """Checks `config` (a training config) and starts JAX: the distributed plan, the CPU
    split (for `config.train.batch_size`, or `batch_size`: None = only an explicit
    --cpu_devices splits), the deterministic XLA flags. Call before anything asks JAX for
    devices. Returns the `distributed.Plan`."""
    deterministic = False
    if config is not None:
        from mmgen_jax import config_checks  # imports the families: not for the judges

        config_checks.check(config)
        batch_size = config.train.batch_size
        deterministic = config.train.get("deterministic", False)
    plan = distributed.plan(fv.multihost, fv.coordinator_address, fv.num_processes, fv.process_id)
    cpu_devices = distributed.cpu_devices(
        fv.cpu_devices, batch_size, multi_process=plan.reason is not None
    )
    distributed.initialize(plan, deterministic=deterministic, num_cpu_devices=cpu_devices)
    return plan
