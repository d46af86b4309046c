"""The family contract: everything the training loop, `sample`, `evaluate` and `benchmark`
may call on a model family, and the helpers every family shares.

A family is a class registered by name in `families/__init__.py`. It is built from a config
(`Family(config, axis_name)`) and exposes pure functions over its own state pytree (a
`flax.struct.dataclass`):

  init(rng) -> state                          a fresh state, deterministic in `rng`
  train_step(state, batch) -> (state, metrics)  one update on one device's shard, averaged
                                              over `axis_name` with `lax.pmean` (pmap-style)
  device_batch(host_batch) -> batch           the host batch fields the step reads, in
                                              device dtypes
  example_batch(batch_size, seed) -> host batch   synthetic data of the configured shapes
                                              (benchmarks and contract tests)
  sampling_variables(state) -> variables      what inference runs with (e.g. EMA weights)

What a family can draw or read is declared in `capabilities`, never probed; each capability
names the method that provides it:

  TEXT_TO_IMAGE  generate(variables, tokens, key, indices) -> images in [-1, 1]
  IMAGE_TO_TEXT  describe(variables, images, key, indices, temperature=0.0) -> tokens
  JOINT          joint(variables, key, indices) -> (images, tokens)
  RECONSTRUCT    reconstruct(variables, images, tokens, key, indices) -> (images, tokens)
  FEATURES       features_and_predictions(variables, images) -> (features, {head: class})
  POSTERIOR      posterior(variables, images, tokens, key, indices) -> latent codes z
                 ~ q(z | image, caption) (N, D)
  LIKELIHOOD     log_likelihood(variables, images, tokens, key, indices, num_samples)
                 -> {"joint", "image", "text": (N,)} lower bounds of log p(x, t), log p(x),
                 log p(t) in nats per example (e.g. importance-weighted, num_samples draws)

Example i of any of these uses randomness fold_in(key, indices[i]) only, so results do not
depend on the batch size or the device count. What these functions compute depends on the
family's class and its config alone: the loop reuses its jitted `init`, step and grid for a
later run of the same experiment in one process.
"""

import abc
import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmgen_jax.data import tokenizer

TEXT_TO_IMAGE = "text_to_image"
IMAGE_TO_TEXT = "image_to_text"
JOINT = "joint"
RECONSTRUCT = "reconstruct"
FEATURES = "features"
POSTERIOR = "posterior"
LIKELIHOOD = "likelihood"

# Capability -> the method that provides it.
METHODS = {
    TEXT_TO_IMAGE: "generate",
    IMAGE_TO_TEXT: "describe",
    JOINT: "joint",
    RECONSTRUCT: "reconstruct",
    FEATURES: "features_and_predictions",
    POSTERIOR: "posterior",
    LIKELIHOOD: "log_likelihood",
}

# State fields a run started from another run's parameters (`config.init_from`) takes
# fresh: it counts its own steps, draws its own noise and may change optimiser settings.
FRESH_FIELDS = ("step", "rng", "opt_state")


class Family(abc.ABC):
    """Base of every family: the contract above plus shared behaviour."""

    capabilities: frozenset = frozenset()
    # Keyword controls over the noise of `generate` that `sample` may use: "truncation"
    # (generate(..., truncation=T)) and "interpolate" (embed(variables, tokens) and
    # draw(variables, z, embeddings)). Declared, never probed.
    noise_controls: frozenset = frozenset()
    # What to change when training diverges, for the loop's one-line error.
    nan_hint: str = "lower the learning rate (--config.train.lr)"

    def __init__(self, config, axis_name="data"):
        self.config = config
        self.axis_name = axis_name

    @abc.abstractmethod
    def init(self, rng):
        """A fresh state; deterministic in `rng`."""

    @abc.abstractmethod
    def train_step(self, state, batch):
        """One update on this device's shard -> (state, metrics averaged over devices)."""

    @abc.abstractmethod
    def device_batch(self, batch):
        """The host batch fields the step reads, in device dtypes (no int64 on device)."""

    @abc.abstractmethod
    def example_batch(self, batch_size, seed):
        """A synthetic host batch of the configured shapes, as the input pipeline yields."""

    @abc.abstractmethod
    def sampling_variables(self, state):
        """The variables inference runs with."""

    def can(self, capability):
        return capability in self.capabilities

    def grid_columns(self, variables, real, tokens, key, cols):
        """The sample grid's columns for rows of real examples (`real` images and their
        caption `tokens`): (Title, images, caption tokens written under them or None).
        Built from the declared capabilities; `cols` samples per row and capability.
        Jittable with `cols` static."""
        rows = len(real)
        row_index = np.arange(rows, dtype=np.uint32)
        sample_index = np.arange(rows * cols, dtype=np.uint32)
        described = None
        if self.can(IMAGE_TO_TEXT):
            described = self.describe(variables, real, key, row_index)
        columns = [(Title("real"), real, described)]
        if self.can(RECONSTRUCT):
            images, written = self.reconstruct(variables, real, tokens, key, row_index)
            columns.append((Title("reconstruction"), images, written))
        if self.can(TEXT_TO_IMAGE):
            drawn = self.generate(variables, np.repeat(tokens, cols, axis=0), key, sample_index)
            drawn = drawn.reshape(rows, cols, *drawn.shape[1:])
            columns += [(Title(f"from caption {j + 1}"), drawn[:, j], None) for j in range(cols)]
        if self.can(JOINT):
            images, written = self.joint(variables, key, sample_index)
            images = images.reshape(rows, cols, *images.shape[1:])
            written = written.reshape(rows, cols, *written.shape[1:])
            columns += [(Title(f"joint {j + 1}"), images[:, j], written[:, j]) for j in range(cols)]
        return columns


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Title:
    """A grid column's title: static data, so `grid_columns` can be jitted whole."""

    text: str


def check(family_class):
    """Raises unless `family_class` provides the method of every capability it declares."""
    unknown = sorted(set(family_class.capabilities) - set(METHODS))
    declared = set(family_class.capabilities) - set(unknown)
    missing = sorted(
        METHODS[c] for c in declared if not callable(getattr(family_class, METHODS[c], None))
    )
    if missing or unknown:
        raise TypeError(
            f"{family_class.__name__} declares capabilities it does not implement "
            f"(missing methods {missing}, unknown capabilities {unknown})"
        )
    return family_class


# ---- helpers every family shares ---------------------------------------------------


@flax.struct.dataclass
class NetworkState:
    """The state of a family that trains one network with one optimiser (VAE, flow)."""

    step: jax.Array  # int32 scalar: optimisation steps taken
    rng: jax.Array  # raw uint32 PRNG key; per step and example via fold_in
    params: Any
    opt_state: Any
    ema_params: Any  # exponential moving average of params, used for sampling


def network_state(params, tx, rng) -> NetworkState:
    """A fresh NetworkState at step 0: `tx`'s initial state, the EMA equal to `params`."""
    return NetworkState(
        step=jnp.zeros((), jnp.int32),
        rng=rng,
        params=params,
        opt_state=tx.init(params),
        ema_params=params,
    )


def device_index(index):
    """A batch's int64 stream indices as uint32 (no int64 on device); per-example
    randomness folds them in, so only their value modulo 2^32 matters."""
    return (np.asarray(index) % 2**32).astype(np.uint32)


def example_keys(key, index):
    """One key per example: fold_in(key, index_i), independent of the device count."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def example_normal(key, index, shape):
    """A standard normal array of `shape` per example, from its stream index."""
    return jax.vmap(lambda k: jax.random.normal(k, shape))(example_keys(key, index))


def ema_update(ema, params, step, decay):
    """The exponential moving average after `step` updates. Its decay warms up as
    (1 + step) / (10 + step) until it reaches `decay`, so early averages are not dominated
    by the random initialisation."""
    step = step.astype(jnp.float32)
    rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return optax.incremental_update(params, ema, 1.0 - rate)


def captioned_batch(batch, config):
    """image, text, index (uint32), and the label when the config's auxiliary label heads
    are on (`train.aux_classifier_weight`): what the captioned families' steps read."""
    out = {"image": batch["image"], "text": batch["text"], "index": device_index(batch["index"])}
    if config.train.get("aux_classifier_weight", 0):
        if "label" not in batch:
            raise ValueError(
                f"train.aux_classifier_weight > 0 needs a dataset with a 'label' feature "
                f"and {config.data.name!r} has none: set "
                f"--config.train.aux_classifier_weight=0"
            )
        out["label"] = batch["label"].astype("int32")
    return out


def synthetic_batch(config, batch_size, seed, labels=None):
    """A host batch of the config's shapes: images uniform in [-1, 1], byte-token captions,
    stream indices, and a random class per entry of `labels` ({name: classes})."""
    rng = np.random.default_rng(seed)
    size = config.data.image_size
    batch = {
        "image": rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
        "text": rng.integers(
            tokenizer.BYTE_OFFSET,
            tokenizer.VOCAB_SIZE,
            (batch_size, config.data.max_text_len),
        ).astype(np.int32),
        "index": np.arange(seed * batch_size, (seed + 1) * batch_size, dtype=np.int64),
    }
    for name, classes in (labels or {}).items():
        batch[name] = rng.integers(0, classes, batch_size).astype(np.int32)
    return batch


def adopt(fresh, other):
    """`fresh` state with every field of `other` (another run's state of the same family and
    shapes) except FRESH_FIELDS: its parameters, EMA and normalisation statistics."""
    if not dataclasses.is_dataclass(fresh):
        return other
    return fresh.replace(
        **{
            f.name: getattr(fresh, f.name)
            if f.name in FRESH_FIELDS
            else adopt(getattr(fresh, f.name), getattr(other, f.name))
            for f in dataclasses.fields(fresh)
        }
    )
