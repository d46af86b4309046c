"""Measure a trained run: python -m mmgen_jax.evaluate --workdir=runs/gan [--step=N]

Generates one image per test caption (eval.num_samples of them, the first of the eval
split in stored order), reads them and the real test images with the feature network
(eval.extractor, default the domain evaluator in eval.evaluator_workdir), and reports
FD, KID, precision/recall and attribute consistency (all / seen / held-out combinations),
plus the same numbers for real images of eval.reference_split against the real test images:
the ceiling each number can reach. Families that write captions add image->text (BLEU-4,
attributes stated) and joint coherence. Writes WORKDIR/eval/step_N.json (best_step_N.json
with --best) and prints a table.
"""

import logging
import os

from absl import app, flags

from mmgen_jax import runs, writers
from mmgen_jax.data import prepare
from mmgen_jax.evaluation import settings as settings_lib
from mmgen_jax.evaluation import suite

flags.DEFINE_string("workdir", None, "A training run's directory.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_bool("best", False, "Evaluate the best checkpoint (WORKDIR/best/) instead.")
flags.DEFINE_string("evaluator_workdir", None, "Overrides eval.evaluator_workdir.")
flags.DEFINE_integer("num_samples", None, "Overrides eval.num_samples.")
flags.DEFINE_string("extractor", None, "Overrides eval.extractor (evaluator, inception_v3).")
flags.DEFINE_string("extractor_file", None, "Overrides eval.extractor_file.")
flags.DEFINE_string("data_dir", None, "Overrides the run's data.data_dir.")
flags.DEFINE_bool("reference", True, "Also measure real reference images (the ceiling row).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS

log = logging.getLogger("mmgen_jax")

# Columns of the table: (metric name without the feature tag, header, scale).
_COLUMNS = (
    ("fd_{tag}", "FD", 1.0),
    ("kid_{tag}", "KID x1e3", 1e3),
    ("precision_{tag}", "precision", 1.0),
    ("recall_{tag}", "recall", 1.0),
    ("consistency", "consistent", 1.0),
    ("consistency_seen", "seen", 1.0),
    ("consistency_held_out", "held-out", 1.0),
)


def evaluate(workdir, step=None, best=False, overrides=None, data_dir=None, reference=True):
    """Measures the run in `workdir`; returns the report written to WORKDIR/eval/."""
    workdir = os.path.abspath(workdir)
    checkpoints = "best" if best else "checkpoints"
    step = runs.resolve_step(workdir, step, checkpoints) if _has_dir(workdir, checkpoints) else None
    if step is None:
        raise FileNotFoundError(
            f"no checkpoint in {os.path.join(workdir, checkpoints)}: train first with "
            f"`python -m mmgen_jax.main --config=... --workdir={workdir}`"
            + (
                " and train.eval_every > 0 (best checkpoints are kept by evaluation)"
                if best
                else ""
            )
        )
    config, family, variables = runs.load_run(workdir, step, checkpoints)
    settings, missing = settings_lib.with_defaults(config.get("eval"))
    if missing:
        log.warning("The run's config.json has no eval field(s) %s: using the defaults.", missing)
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    data_dir = data_dir or config.data.data_dir or prepare.default_data_dir()
    measure = suite.Suite(config, settings, settings.num_samples, data_dir)
    report = {
        "workdir": workdir,
        "step": int(step),
        "checkpoint": checkpoints,
        "dataset": config.data.name,
        "eval_split": config.data.eval_split,
        "num_samples": measure.num,
        "feature_network": measure.extractor.describe(),
        "feature_tag": measure.extractor.tag,
        "consistency_network": measure.judge.describe(),
        "settings": settings.to_dict(),
        "defaults_filled": missing,
        "generated": measure.measure_run(family, variables),
    }
    if reference:
        report["reference_split"] = settings.reference_split
        report["reference"] = measure.reference(settings.reference_split)
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    name = f"{'best_' if best else ''}step_{step}.json"
    writers.write_json(os.path.join(out_dir, name), report)
    report["path"] = os.path.join(out_dir, name)
    return report


def _has_dir(workdir, name):
    return os.path.isdir(os.path.join(workdir, name))


def table(report):
    """The report as a fixed-width text table: generated row, then the reference row."""
    tag = report["feature_tag"]
    rows = [(f"generated (step {report['step']})", report["generated"])]
    if "reference" in report:
        rows.append((f"real {report['reference_split']} vs test", report["reference"]))
    columns = [(key.format(tag=tag), head, scale) for key, head, scale in _COLUMNS]
    width = max(len(label) for label, _ in rows)
    lines = [" ".join([" " * width] + [f"{head:>10}" for _, head, _ in columns])]
    for label, values in rows:
        cells = [
            f"{values[key] * scale:>10.4f}" if key in values else f"{'-':>10}"
            for key, _, scale in columns
        ]
        lines.append(" ".join([f"{label:<{width}}"] + cells))
    extra = {k: v for k, v in report["generated"].items() if k.startswith(("caption_", "joint_"))}
    if extra:
        lines.append("text: " + " ".join(f"{k}={v:.4f}" for k, v in extra.items()))
    lines.append(
        f"{report['num_samples']} test captions of {report['dataset']}/{report['eval_split']}; "
        f"features: {report['feature_network']['name']} ({tag}); FD/KID/P-R against the real "
        f"test images; consistency: share of images whose evaluator-read attributes all match "
        f"the caption"
    )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    overrides = {
        "evaluator_workdir": FLAGS.evaluator_workdir,
        "num_samples": FLAGS.num_samples,
        "extractor": FLAGS.extractor,
        "extractor_file": FLAGS.extractor_file,
    }
    try:
        report = evaluate(
            FLAGS.workdir, FLAGS.step, FLAGS.best, overrides, FLAGS.data_dir, FLAGS.reference
        )
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"FATAL: {e}") from None
    print(table(report))
    print(f"wrote {report.pop('path')}")


if __name__ == "__main__":
    app.run(main)
