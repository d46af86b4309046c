"""Measure a trained run: python -m mmgen_jax.evaluate --workdir=runs/gan [--step=N]

Generates one image per test caption (eval.num_samples of them, the first of the eval
split in stored order), reads them and the real test images with the feature network
(eval.extractor, default the domain evaluator in eval.evaluator_workdir), and reports
FD, KID, precision/recall and attribute consistency (all / seen / held-out combinations;
on datasets with a split of held-out phrasings, as many images again drawn from those
captions: `consistency_phrasing_held_out`), plus the same numbers for real images of
eval.reference_split against the real test images: the ceiling each number can reach.
Families that write captions add image->text (BLEU-4, attributes stated) and joint
coherence (joint samples from the run's model.joint_prior, or --joint_prior; the report's
"joint_prior" names it); families with a likelihood (the VAE) add IWAE bounds of the test set's
log p(image, caption), log p(image) and log p(caption) (eval.iwae_samples draws per
example). Writes WORKDIR/eval/step_N.json (best_step_N.json with --best) and
prints a table.
"""

from absl import flags

from mmgen_jax import app, runs
from mmgen_jax.evaluation import report as report_lib

FLAGS = app.flag_values()
flags.DEFINE_string("workdir", None, "A training run's directory.", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=FLAGS)
flags.DEFINE_bool("best", False, "Evaluate the best checkpoint (WORKDIR/best/).", flag_values=FLAGS)
flags.DEFINE_string(
    "evaluator_workdir", None, "Overrides eval.evaluator_workdir.", flag_values=FLAGS
)
flags.DEFINE_integer("num_samples", None, "Overrides eval.num_samples.", flag_values=FLAGS)
flags.DEFINE_string(
    "extractor", None, "Overrides eval.extractor (evaluator, inception_v3).", flag_values=FLAGS
)
flags.DEFINE_string("extractor_file", None, "Overrides eval.extractor_file.", flag_values=FLAGS)
flags.DEFINE_integer(
    "iwae_samples", None, "Overrides eval.iwae_samples (0 = no likelihood).", flag_values=FLAGS
)
flags.DEFINE_string("data_dir", None, "Overrides the run's data.data_dir.", flag_values=FLAGS)
flags.DEFINE_enum(
    "joint_prior",
    None,
    runs.JOINT_PRIORS,
    "Overrides model.joint_prior: joint samples' z from N(0, I) or a mixture fitted to "
    "training codes (runs without the field: standard).",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "reference", True, "Also measure real reference images (the ceiling row).", flag_values=FLAGS
)
flags.DEFINE_bool(
    "judge",
    False,
    "Also report the consistency the independent attribute judge reads.",
    flag_values=FLAGS,
)
app.define_sampling(FLAGS)
flags.mark_flag_as_required("workdir", flag_values=FLAGS)


def main(argv):
    del argv
    app.start(FLAGS)
    overrides = {
        "evaluator_workdir": FLAGS.evaluator_workdir,
        "num_samples": FLAGS.num_samples,
        "extractor": FLAGS.extractor,
        "extractor_file": FLAGS.extractor_file,
        "iwae_samples": FLAGS.iwae_samples,
    }
    report = report_lib.evaluate(
        FLAGS.workdir,
        FLAGS.step,
        FLAGS.best,
        overrides,
        FLAGS.data_dir,
        FLAGS.reference,
        FLAGS.judge,
        sampling=app.sampling(FLAGS),
        joint_prior=FLAGS.joint_prior,
    )
    print(report_lib.table(report))
    print(f"wrote {report.pop('path')}")


if __name__ == "__main__":
    app.run(main, FLAGS)
