"""Feature networks for the distance metrics, by name.

  evaluator     the project's domain evaluator (`configs/evaluator.py`): penultimate features
                of an attribute classifier trained on the run's dataset, plus its attribute
                predictions (text->image consistency). Metric names end in the dataset's tag,
                e.g. `fd_digits`: these are not FID numbers.
  inception_v3  standard FID features: the FID Inception-v3's pool3 (`evaluation/inception.py`),
                from the weights `python -m mmgen_jax.convert_inception` writes (default
                path, or eval.extractor_file); metric names end in `inception`.

`get(name, settings)` returns an extractor: `extractor(images)` maps float images in [-1, 1]
(N, H, W, 3) to (features (N, D) float32, {attribute: predicted class (N,)}); `tag` names
its metrics and `describe()` is recorded beside the numbers; `normalise_features` says
whether distances are taken on features rescaled to unit mean square (see `suite.Suite`), and
`cache_key()` names the network for cached real-split features (None: never cached).
"""

import json
import os

import numpy as np

from mmgen_jax import parallel, runs
from mmgen_jax.evaluation import inception

EVALUATOR_COMMAND = "python -m mmgen_jax.main --config=configs/evaluator.py --workdir={workdir}"


class DomainEvaluator:
    """The attribute classifier trained in `workdir` (family 'evaluator')."""

    normalise_features = True  # its feature scale is set by training, not by a standard

    def __init__(self, workdir, batch_size=256):
        self.workdir = os.path.abspath(workdir)
        has_checkpoint = os.path.isdir(os.path.join(self.workdir, "checkpoints")) and (
            runs.resolve_step(self.workdir) is not None
        )
        if not os.path.exists(os.path.join(self.workdir, "config.json")) or not has_checkpoint:
            raise FileNotFoundError(
                f"no trained domain evaluator in {self.workdir}. Train it (a few minutes on "
                f"CPU) with `{EVALUATOR_COMMAND.format(workdir=workdir)}`, or point "
                f"eval.evaluator_workdir (evaluate: --evaluator_workdir) at one"
            )
        self.config, family, self.variables = runs.load_run(self.workdir)
        if self.config.model.family != "evaluator":
            raise ValueError(
                f"{self.workdir} holds a {self.config.model.family!r} run, not a domain "
                f"evaluator; train one with `{EVALUATOR_COMMAND.format(workdir=workdir)}`"
            )
        self.dataset = self.config.data.name
        self.tag = self.dataset.split("/")[0].split("_")[0]  # digits_captions -> "digits"
        self.heads = dict(family.heads)
        self.batch_size = batch_size
        self._map = parallel.BatchedMap(family.features_and_predictions)

    def __call__(self, images):
        return self._map(self.variables, np.asarray(images, np.float32), batch_size=self.batch_size)

    def cache_key(self):
        return None  # retrained per dataset and run: its features are never reused

    def describe(self):
        path = os.path.join(self.workdir, "accuracy.json")
        accuracy = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                accuracy = json.load(f)
        return {
            "name": "evaluator",
            "workdir": self.workdir,
            "dataset": self.dataset,
            "step": runs.resolve_step(self.workdir),
            "test_accuracy": accuracy,
        }

    def check_dataset(self, name):
        """The features only mean something on the dataset the evaluator was trained on."""
        if name != self.dataset:
            raise ValueError(
                f"the domain evaluator in {self.workdir} was trained on {self.dataset!r}, this "
                f"run uses {name!r}: train one on it with "
                f"`{EVALUATOR_COMMAND.format(workdir='runs/evaluator_' + name.split('/')[0])} "
                f"--config.data.name={name}` and pass its workdir"
            )


REGISTRY = {
    "evaluator": lambda settings: DomainEvaluator(settings.evaluator_workdir, settings.batch_size),
    "inception_v3": lambda settings: inception.InceptionFeatures(
        settings.extractor_file, settings.batch_size
    ),
}


def get(name, settings):
    """The extractor `name` built from the `eval` settings; a clear error for unknown names."""
    if name not in REGISTRY:
        raise ValueError(f"unknown eval.extractor {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name](settings)
