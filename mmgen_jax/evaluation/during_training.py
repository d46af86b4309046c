"""Evaluation inside the training loop, every `train.eval_every` steps and at the end.

For a generative family: the `evaluate` metrics on `eval.train_num_samples` test captions
(joint samples from model.joint_prior, its mixture fitted anew each time) go to metrics.jsonl and TensorBoard, and the best checkpoint by `eval.best_metric` is kept in
WORKDIR/best/ (with best.json), apart from checkpoints/ so that resuming from the latest
step is untouched. For the domain evaluator itself: its test accuracy per attribute, also
written to WORKDIR/accuracy.json, which `evaluate` records beside its numbers.

Every process computes the same numbers (each on its own devices), so all agree on when to
save the best checkpoint, a collective operation; only process 0 writes files.
"""

import json
import logging
import os

import jax
import numpy as np

from mmgen_jax import checkpoint, parallel, runs, writers
from mmgen_jax.evaluation import metrics, suite
from mmgen_jax.evaluation import settings as settings_lib
from mmgen_jax.families import base

log = logging.getLogger("mmgen_jax")


def create(config, family, data_dir, workdir):
    """The evaluation for this run, or None when `train.eval_every` is 0 (or absent)."""
    if not config.train.get("eval_every", 0):
        return None
    if family.can(base.FEATURES):
        return ClassifierAccuracy(config, family, data_dir, workdir)
    if family.can(base.TEXT_TO_IMAGE):
        return GeneratorMetrics(config, family, data_dir, workdir)
    raise ValueError(
        f"train.eval_every > 0, but the {config.model.family!r} family neither draws from "
        f"captions nor reads attributes: set --config.train.eval_every=0"
    )


class ClassifierAccuracy:
    """Test accuracy of each head of the domain evaluator (all / seen / held-out rows)."""

    def __init__(self, config, family, data_dir, workdir):
        self.family, self.workdir = family, workdir
        self.is_main = jax.process_index() == 0
        self.test = suite.load_split(
            config, config.data.eval_split, config.train.eval_examples, data_dir
        )
        self._map = parallel.BatchedMap(family.features_and_predictions)

    def run(self, step, state, data_state, writer):
        del data_state
        variables = self.family.sampling_variables(parallel.single_copy(state))
        _, predicted = self._map(variables, self.test["image"], batch_size=256)
        targets = {h: self.test[h] for h in self.family.heads}
        scores = metrics.consistency(predicted, targets, self.test.get("held_out"))
        accuracy = {k.replace("consistency", "test_accuracy", 1): v for k, v in scores.items()}
        writer.scalars(step, accuracy)
        if self.is_main:
            writers.write_json(
                os.path.join(self.workdir, "accuracy.json"),
                {"step": int(step), "num": len(self.test["caption"]), **accuracy},
            )
        log.info("step %d test accuracy %s", step, _short(accuracy))
        return accuracy

    def close(self):
        pass


class GeneratorMetrics:
    """FD/KID/P-R/consistency on a few hundred test captions; keeps the best checkpoint."""

    def __init__(self, config, family, data_dir, workdir):
        self.settings, _ = settings_lib.with_defaults(config.get("eval"))
        self.family, self.workdir = family, workdir
        self.config, self.data_dir = config, data_dir
        # Joint samples from the prior `evaluate` and `sample` use (model.joint_prior).
        self.joint_prior = runs.joint_prior(config) if family.can(base.JOINT) else None
        self.suite = suite.Suite(config, self.settings, self.settings.train_num_samples, data_dir)
        names = self.suite.names()
        s = self.settings
        if s.best_metric not in names:
            raise ValueError(
                f"eval.best_metric={s.best_metric!r} is not among the metrics measured here: "
                f"{', '.join(names)}"
            )
        if s.best_mode not in settings_lib.BEST_MODES:
            raise ValueError(f"eval.best_mode={s.best_mode!r}: use 'min' or 'max'")
        self.best = checkpoint.Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
        self.best_path = os.path.join(workdir, "best.json")
        self.best_value = None
        if os.path.exists(self.best_path):  # resuming: the best so far stays the bar
            with open(self.best_path, encoding="utf-8") as f:
                record = json.load(f)
            if record.get("metric") == s.best_metric:
                self.best_value = record["value"]
        self.is_main = jax.process_index() == 0

    def run(self, step, state, data_state, writer):
        variables = self.family.sampling_variables(parallel.single_copy(state))
        if self.joint_prior:  # refitted to the current codes (~1 s at the default config)
            s = self.settings
            variables = runs.with_joint_prior(
                self.config,
                self.family,
                variables,
                self.joint_prior,
                s.seed,
                s.batch_size,
                self.data_dir,
            )
        # The likelihood bounds cost ~30 s each time: `evaluate` reports them.
        values = self.suite.measure_run(self.family, variables, likelihood=False)
        writer.scalars(step, {f"eval/{k}": v for k, v in values.items()})
        value, s = values[self.settings.best_metric], self.settings
        better = self.best_value is None or (
            value < self.best_value if s.best_mode == "min" else value > self.best_value
        )
        if better and np.isfinite(value):
            self.best.save(step, state, data_state)
            self.best_value = value
            if self.is_main:
                record = {"step": int(step), "metric": s.best_metric, "value": value}
                writers.write_json(self.best_path, record)
        log.info("step %d eval %s%s", step, _short(values), " (best)" if better else "")
        return values

    def close(self):
        self.best.wait()
        self.best.close()


def _short(values):
    return " ".join(f"{k}={v:.4g}" for k, v in values.items())
