"""Feature networks for the distance metrics, by name.

  evaluator     the project's domain evaluator (`configs/evaluator.py`): penultimate features
                of an attribute classifier trained on the run's dataset, plus its attribute
                predictions (text->image consistency). Metric names end in the dataset's tag,
                e.g. `fd_digits`: these are not FID numbers.
  inception_v3  standard FID features, from a file the user supplies (no weights can be
                downloaded here). The file holds a feature function serialised with
                `jax.export` (see `ExportedFeatures`); metric names end in `inception`.

`get(name, settings)` returns an extractor: `extractor(images)` maps float images in [-1, 1]
(N, H, W, 3) to (features (N, D) float32, {attribute: predicted class (N,)}); `tag` names
its metrics and `describe()` is recorded beside the numbers.
"""

import json
import os
import re

import jax
import numpy as np

from mmgen_jax import parallel, runs

EVALUATOR_COMMAND = "python -m mmgen_jax.main --config=configs/evaluator.py --workdir={workdir}"


class DomainEvaluator:
    """The attribute classifier trained in `workdir` (family 'evaluator')."""

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


class ExportedFeatures:
    """A feature function from a file written with `jax.export` (e.g. Inception-v3 pool3).

    The file is `jax.export.export(jax.jit(f))(spec).serialize()` for a function
    `f(images) -> features (N, D)` taking float32 images (N, S, S, 3) in [-1, 1], N fixed or
    symbolic. Images are resized bilinearly to S x S first. For FID, `f` is Inception-v3
    up to its 2048-d average pool, e.g. a JAX/Flax port of the FID network (the 2015-12-05
    TensorFlow graph that TTUR and pytorch-fid use) wrapped so it takes [-1, 1] inputs.
    """

    tag = "inception"
    heads: dict = {}  # noqa: RUF012 (no attribute predictions)

    def __init__(self, path, batch_size=256):
        if not path:
            raise ValueError(
                "eval.extractor='inception_v3' needs the Inception-v3 feature function as a "
                "file: set eval.extractor_file (evaluate: --extractor_file) to a jax.export "
                "file (see README 'Evaluation'), or use eval.extractor='evaluator'"
            )
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"eval.extractor_file {path} does not exist; it must be a jax.export file "
                f"of an Inception-v3 feature function (see README 'Evaluation')"
            )
        with open(path, "rb") as f:
            data = f.read()
        try:
            self.exported = jax.export.deserialize(bytearray(data))
        except Exception as e:  # any parse failure means the same to a user
            raise ValueError(
                f"{path} is not a jax.export serialisation ({type(e).__name__}: {e}); write "
                f"it with jax.export.export(jax.jit(f))(spec).serialize()"
            ) from e
        _check_custom_calls(self.exported, path)
        (spec,) = self.exported.in_avals
        if len(spec.shape) != 4 or spec.shape[3] != 3:
            raise ValueError(f"{path} takes inputs of shape {spec.shape}; need (N, S, S, 3)")
        self.path = os.path.abspath(path)
        self.size = int(spec.shape[1])
        # A fixed batch dimension is the batch we feed; a symbolic one takes ours.
        self.batch = spec.shape[0] if isinstance(spec.shape[0], int) else batch_size
        self._jitted = jax.jit(self._features)

    def _features(self, images):
        size = (images.shape[0], self.size, self.size, 3)
        return self.exported.call(jax.image.resize(images, size, "bilinear"))

    def __call__(self, images):
        images = np.asarray(images, np.float32)
        feats = [
            np.asarray(self._batched(images[i : i + self.batch]))
            for i in range(0, len(images), self.batch)
        ]
        return np.concatenate(feats).astype(np.float32), {}

    def _batched(self, rows):
        real = len(rows)
        rows = np.concatenate([rows, np.repeat(rows[-1:], self.batch - real, 0)])
        return self._jitted(rows)[:real]

    def describe(self):
        return {"name": "inception_v3", "file": self.path, "input_size": self.size}


# The only custom calls a feature function needs: shape checks of a symbolic batch and
# sharding annotations. Any other target runs native code of its own (host callbacks, Pallas
# or Triton kernels, LAPACK), which a file from elsewhere must not bring in.
ALLOWED_CUSTOM_CALLS = frozenset(
    {"shape_assertion", "Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}
)
# `stablehlo.custom_call @target(` (pretty form) or `call_target_name = "target"` (generic).
_CUSTOM_CALL = re.compile(
    r'stablehlo\.custom_call\s*@"?([^\s"(]+)'
    r'|stablehlo\.custom_call"\s*\(.*?call_target_name\s*=\s*"([^"]*)"'
)


def _check_custom_calls(exported, path):
    """Refuses an exported module that calls a custom-call target not on the allow-list."""
    text = exported.mlir_module()
    found = _CUSTOM_CALL.findall(text)
    targets = {a or b for a, b in found}
    # Source locations may hold the words (a function name); the op's full name is counted.
    if text.count("stablehlo.custom_call") > len(found):  # a form the pattern cannot read
        targets.add("<unreadable target>")
    refused = sorted(targets - ALLOWED_CUSTOM_CALLS)
    if refused:
        raise ValueError(
            f"{path} calls custom-call targets {refused}, which run native code of their own; "
            f"an extractor file may only use {sorted(ALLOWED_CUSTOM_CALLS)}: export the "
            f"feature function from plain JAX operations"
        )


REGISTRY = {
    "evaluator": lambda settings: DomainEvaluator(settings.evaluator_workdir, settings.batch_size),
    "inception_v3": lambda settings: ExportedFeatures(settings.extractor_file, settings.batch_size),
}


def get(name, settings):
    """The extractor `name` built from the `eval` settings; a clear error for unknown names."""
    if name not in REGISTRY:
        raise ValueError(f"unknown eval.extractor {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name](settings)
