"""Train a model: python -m mmgen_jax.main --config=configs/gan.py --workdir=runs/gan

Re-running the same command resumes from the latest checkpoint in --workdir.
Multi-process jobs (srun, a TPU slice) run the same command in every process; see
mmgen_jax/distributed.py for when `jax.distributed` is initialised.
Override config fields with --config.train.num_steps=200; pick variants with
--config=configs/gan.py:smoke. The start-up (flags, logging, devices) is mmgen_jax/app.py.
"""

from absl import flags

from mmgen_jax import app, train

FLAGS = app.flag_values()
app.define_config(FLAGS)
flags.DEFINE_string(
    "workdir", None, "The run's directory: checkpoints, metrics, samples.", flag_values=FLAGS
)
flags.mark_flag_as_required("workdir", flag_values=FLAGS)


def main(argv):
    del argv
    app.start(FLAGS, config=FLAGS.config)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, FLAGS)
