"""Seed study: one run per seed, then a table of mean ± std over the seeds.

    python -m mmgen_jax.sweep --config=configs/gan.py --seeds=0,1,2 --root=runs/study
    python -m mmgen_jax.sweep --config=configs/gan.py --seeds=0,1,2 --root=/shared/study \\
        --launcher=slurm        # sbatch launch/slurm.sbatch, one job per seed
    python -m mmgen_jax.sweep ... --launcher=tpu --tpu_name=my-v4-32 --tpu_zone=us-central2-b

Seed N trains in ROOT/seed_N with `--config.seed=N` and any `--config.FIELD=VALUE` given
here. `local` trains the seeds one after another in this process; `slurm` submits a job per
seed and `tpu` runs each seed on the slice in turn (`--dry_run` prints those commands). A run
is finished when its latest checkpoint is at train.num_steps; finished runs are skipped, so
re-running the same command resumes unfinished runs and, once all are finished, only
rewrites the table: ROOT/study.md and ROOT/study.csv, and ROOT/report.html (every seed's
curves as mean ± std over the seeds, and its sample grids: see mmgen_jax/report.py).

Per run and metric (every numeric key in metrics.jsonl except step and wall-clock fields):
  final = the metric's value in the last row that has it (the end of training; evaluation
          metrics appear only in the rows of evaluation steps);
  best  = its minimum over all rows, or its maximum for metrics where higher is better
          (names containing one of HIGHER_IS_BETTER); the table says which.
Across runs: mean, sample standard deviation (ddof=1; empty for n=1) and n, the number of
finished runs that report the metric.
"""

import csv
import json
import logging
import os
import shlex
import subprocess
import sys

import numpy as np
from absl import flags

from mmgen_jax import app, checkpoint, config_checks, report

FLAGS = app.flag_values()
app.define_config(FLAGS)
flags.DEFINE_list(
    "seeds", ["0", "1", "2"], "Seeds, comma-separated: one run each.", flag_values=FLAGS
)
flags.DEFINE_string(
    "root", None, "Study directory: ROOT/seed_N per run, study.md/csv.", flag_values=FLAGS
)
flags.DEFINE_enum(
    "launcher", "local", ["local", "slurm", "tpu"], "Where the runs train.", flag_values=FLAGS
)
flags.DEFINE_string("tpu_name", None, "--launcher=tpu: the TPU VM slice's name.", flag_values=FLAGS)
flags.DEFINE_string("tpu_zone", None, "--launcher=tpu: its zone.", flag_values=FLAGS)
flags.DEFINE_bool(
    "dry_run", False, "slurm/tpu: print the commands instead of running them.", flag_values=FLAGS
)
flags.mark_flag_as_required("root", flag_values=FLAGS)

# Metrics where larger is better; every other metric is best at its minimum (losses,
# Fréchet distance, KID).
HIGHER_IS_BETTER = ("acc", "precision", "recall", "coverage", "density", "score", "consistency")
# Keys of metrics.jsonl that are not results.
NOT_METRICS = ("step", "wall_time", "steps_per_sec")

log = logging.getLogger("mmgen_jax")


def run_dir(root, seed):
    return os.path.join(root, f"seed_{seed}")


def is_finished(workdir, num_steps):
    """True when `workdir`'s latest complete checkpoint is at `num_steps`."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return False
    ckpt = checkpoint.Checkpointer(directory, read_only=True)
    try:
        return ckpt.latest_step() == num_steps
    finally:
        ckpt.close()


def higher_is_better(metric):
    return any(word in metric.lower() for word in HIGHER_IS_BETTER)


def run_summary(workdir):
    """{metric: (final, best)} of one run's metrics.jsonl (see the module docstring)."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    series = {}
    for row in rows:
        for key, value in row.items():
            if key not in NOT_METRICS and isinstance(value, int | float):
                series.setdefault(key, []).append(float(value))
    return {
        key: (values[-1], max(values) if higher_is_better(key) else min(values))
        for key, values in series.items()
    }


def aggregate(summaries):
    """[{metric: (final, best)}] per run -> rows of the study table, sorted by metric."""

    def stats(values):
        values = np.asarray(values)
        std = float(np.std(values, ddof=1)) if len(values) > 1 else None
        return float(np.mean(values)), std

    table = []
    for metric in sorted({k for s in summaries for k in s}):
        present = [s[metric] for s in summaries if metric in s]
        final_mean, final_std = stats([final for final, _ in present])
        best_mean, best_std = stats([best for _, best in present])
        table.append(
            {
                "metric": metric,
                "final_mean": final_mean,
                "final_std": final_std,
                "best": "max" if higher_is_better(metric) else "min",
                "best_mean": best_mean,
                "best_std": best_std,
                "n": len(present),
            }
        )
    return table


def _pm(mean, std):
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"


def write_study(root, table, finished, unfinished, config_arg):
    """ROOT/study.csv (one row per metric) and ROOT/study.md (the same as a table)."""
    fields = ["metric", "final_mean", "final_std", "best", "best_mean", "best_std", "n"]
    with open(os.path.join(root, "study.csv"), "w", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(f, fieldnames=fields)
        out.writeheader()
        for row in table:
            out.writerow({k: "" if row[k] is None else row[k] for k in fields})
    lines = [
        f"# Seed study: {config_arg}",
        "",
        f"Finished runs (seeds): {', '.join(map(str, finished)) or 'none'}."
        + (f" Unfinished, not counted: {', '.join(map(str, unfinished))}." if unfinished else ""),
        (
            "final = last logged value; best = min over logged rows, or max where higher is "
            "better (column `best`); mean ± sample std over runs; n = runs reporting the metric."
        ),
        "",
        "| metric | final | best | best of | n |",
        "|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['metric']} | {_pm(row['final_mean'], row['final_std'])} | "
            f"{_pm(row['best_mean'], row['best_std'])} | {row['best']} | {row['n']} |"
        )
    with open(os.path.join(root, "study.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def config_overrides(argv):
    """The `--config.FIELD=VALUE` arguments of `argv`, to pass on to each run."""
    overrides = [a for a in argv if a.startswith("--config.")]
    if any(a.split("=")[0] == "--config.seed" for a in overrides):
        raise app.UsageError("the sweep sets --config.seed per run: use --seeds=0,1,2 instead")
    return overrides


def remote_command(launcher, config_arg, workdir, seed, overrides, tpu_name=None, zone=None):
    """The launch/ script command that trains one seed on a cluster."""
    args = [config_arg, workdir, f"--config.seed={seed}", *overrides]
    if launcher == "slurm":
        return ["sbatch", f"--job-name=seed_{seed}", "launch/slurm.sbatch", *args]
    if launcher == "tpu":
        if not (tpu_name and zone):
            raise app.UsageError("--launcher=tpu needs --tpu_name and --tpu_zone")
        return ["bash", "launch/tpu_vm.sh", tpu_name, zone, *args]
    raise ValueError(f"no remote command for launcher {launcher!r}")


def run_study(config, config_arg, seeds, root, launcher="local", overrides=(), **remote):
    """Trains (or submits) every unfinished seed, then writes the table of finished runs.

    Returns the table rows (see `aggregate`).
    """
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    num_steps = config.train.num_steps
    dry_run = remote.pop("dry_run", False)
    for seed in seeds:
        workdir = run_dir(root, seed)
        if is_finished(workdir, num_steps):
            log.info("seed %d: finished in %s, skipped.", seed, workdir)
            continue
        if launcher == "local":
            from mmgen_jax import train  # imported here: submitting needs no model code

            log.info("seed %d: training in %s", seed, workdir)
            seeded = config.copy_and_resolve_references()
            seeded.seed = seed
            train.train_and_evaluate(seeded, workdir)
            continue
        cmd = remote_command(launcher, config_arg, workdir, seed, overrides, **remote)
        if dry_run:
            print(shlex.join(cmd))
        else:
            log.info("seed %d: %s", seed, shlex.join(cmd))
            subprocess.run(cmd, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    finished = [s for s in seeds if is_finished(run_dir(root, s), num_steps)]
    unfinished = [s for s in seeds if s not in finished]
    table = aggregate([run_summary(run_dir(root, s)) for s in finished])
    write_study(root, table, finished, unfinished, config_arg)
    # The seeds' curves (mean ± std) and grids beside the table.
    report.write_report([root], os.path.join(root, "report.html"))
    if unfinished:
        log.info(
            "%d of %d runs not finished (%s); rerun this command to aggregate them once done.",
            len(unfinished),
            len(seeds),
            ", ".join(map(str, unfinished)),
        )
    log.info("Wrote %s, study.csv and report.html.", os.path.join(root, "study.md"))
    return table


def main(argv):
    del argv
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        raise app.UsageError(f"--seeds must be integers, got {','.join(FLAGS.seeds)}") from None
    if FLAGS.launcher == "local":
        # Seeds train in this process: exactly `main`'s start-up (checks, devices, XLA flags).
        app.start(FLAGS, config=FLAGS.config)
    else:
        config_checks.check(FLAGS.config)  # refused here, not on the cluster
    run_study(
        FLAGS.config,
        _config_arg(sys.argv[1:]),
        seeds,
        FLAGS.root,
        FLAGS.launcher,
        config_overrides(sys.argv[1:]),
        tpu_name=FLAGS.tpu_name,
        zone=FLAGS.tpu_zone,
        dry_run=FLAGS.dry_run,
    )


def _config_arg(argv):
    """The FILE[:VARIANT] given as --config, passed on as is to remote runs."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.removeprefix("--config=")
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return FLAGS["config"].config_filename


if __name__ == "__main__":
    app.run(main, FLAGS)
