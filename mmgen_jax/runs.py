"""A trained run, read back: its config, family and sampling variables from a checkpoint,
its dataset's examples, the prior its joint samples are drawn from, and batched,
data-parallel generation. Shared by `sample` and `evaluate` (no flags here)."""

import json
import logging
import os

import jax
import ml_collections
import numpy as np

from mmgen_jax import checkpoint, families, latent_mixture, parallel
from mmgen_jax.data import pipeline, prepare
from mmgen_jax.families import base

log = logging.getLogger("mmgen_jax")

# Sampling-time model fields a command may change (`sample`/`evaluate` flags of these names):
# those of models that sample by integrating an ODE (configs/flow.py).
SAMPLING_FIELDS = ("guidance", "sample_steps", "sampler")

# model.joint_prior: where joint samples draw z from: N(0, I), or a Gaussian mixture fitted
# to the latent codes of training pairs (ex-post density estimation).
JOINT_PRIORS = ("standard", "mixture")
# The joint prior's model.* fields, with the values that runs whose config.json predates them
# were sampled with.
JOINT_PRIOR_DEFAULTS = {
    "joint_prior": "standard",
    "joint_mixture_components": 20,
    "joint_mixture_examples": 2000,
}


def load_run(workdir, step=None, checkpoints="checkpoints", sampling=None):
    """(config, family, sampling variables) of the run in `workdir` at `step` (default: the
    latest) of its `checkpoints` folder (`best` holds the best checkpoint by eval metric).
    `sampling`: {field of SAMPLING_FIELDS: value or None (keep the run's)} for this load."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{workdir} is not a training run (no config.json); pass the "
            f"--workdir of a `python -m mmgen_jax.main` run"
        )
    with open(path, encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    config = with_sampling(config, sampling or {}, workdir)
    family = families.get(config.model.family)(config)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, checkpoints), read_only=True)
    try:
        rng = jax.random.PRNGKey(config.seed)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = checkpoint.abstract(jax.eval_shape(family.init, rng), device)
        state, _ = ckpt.restore(target, step)
    finally:
        ckpt.close()
    return config, family, family.sampling_variables(state)


def with_sampling(config, changes, workdir):
    """A copy of a run's config with sampling-time `model.*` fields changed (None = keep);
    the family checks the values when it is built. A field the run's model lacks is one clear
    error."""
    changes = {k: v for k, v in changes.items() if v is not None}
    missing = [k for k in changes if k not in config.model]
    if missing:
        raise ValueError(
            f"{', '.join('--' + k for k in missing)}: the {config.model.family!r} run in "
            f"{workdir} has no model.{missing[0]}; these flags apply to runs that sample with "
            f"them (configs/flow.py)"
        )
    config = config.copy_and_resolve_references()
    for name, value in changes.items():
        config.model[name] = type(config.model[name])(value)
    return config


def resolve_step(workdir, step=None, checkpoints="checkpoints"):
    """`step`, or the latest step of the run's `checkpoints` folder (None if it has none)."""
    if step is not None:
        return step
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, checkpoints), read_only=True)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def generate_from_tokens(family, variables, tokens, seed=0, batch_size=256, run=None):
    """Images in [-1, 1] for caption tokens (N, L), batched over this process's devices;
    image i uses noise fold_in(PRNGKey(seed), i). `run`: a `generator(family)` to reuse."""
    run = generator(family) if run is None else run
    indices = np.arange(len(tokens), dtype=np.uint32)
    return run((variables, jax.random.PRNGKey(seed)), tokens, indices, batch_size=batch_size)


def generator(family, mesh=None):
    """`family.generate` as a `parallel.BatchedMap` over ((variables, key), tokens, indices)."""
    return parallel.BatchedMap(
        lambda shared, tokens, indices: family.generate(shared[0], tokens, shared[1], indices),
        mesh,
    )


def examples(config, num=None, split=None, data_dir=None):
    """The first `num` (default: all) examples of `split` (default: the run's eval split) of
    the run's dataset, one batch, read from `data_dir` (default: the run's)."""
    d = config.data
    return pipeline.eval_batch(
        name=d.name,
        data_dir=data_dir or d.data_dir or prepare.default_data_dir(),
        split=split or d.eval_split,
        image_size=d.image_size,
        max_text_len=d.max_text_len,
        num=num or 2**31 - 1,
        builder_kwargs=pipeline.builder_kwargs(d),
        at_most=True,
        tokenizer_name=d.get("tokenizer", "bytes"),
    )


def joint_prior(config, override=None):
    """The prior the run's joint samples draw z from: `override` (a command's --joint_prior)
    or its model.joint_prior; one clear error for an unknown name."""
    name = override or config.model.get("joint_prior", JOINT_PRIOR_DEFAULTS["joint_prior"])
    if name not in JOINT_PRIORS:
        field = "--joint_prior" if override else "model.joint_prior (the run's config.json)"
        raise ValueError(f"{field}={name!r}: use one of {', '.join(map(repr, JOINT_PRIORS))}")
    return name


def with_joint_prior(
    config,
    family,
    variables,
    prior,
    seed=0,
    batch_size=256,
    data_dir=None,
    components=None,
    num_examples=None,
):
    """`variables` for the family's `joint` under `prior` (a JOINT_PRIORS name): unchanged for
    "standard" (N(0, I)); for "mixture", plus "latent_mixture": a Gaussian mixture of
    `components` (default model.joint_mixture_components) fitted by EM to codes
    z ~ q(z|x,t) of the first `num_examples` (default model.joint_mixture_examples) training
    pairs (example i's code from fold_in(key, i)). Deterministic in `seed`."""
    if prior == "standard":
        return variables
    if not family.can(base.POSTERIOR):
        raise ValueError(
            f"joint prior {prior!r} needs a model with the {base.POSTERIOR} capability; "
            f"{config.model.family!r} runs have none: use --joint_prior=standard"
        )
    if components is None:
        components = _joint_field(config, "joint_mixture_components")
    if num_examples is None:
        num_examples = _joint_field(config, "joint_mixture_examples")
    if components < 1 or num_examples < 1:
        raise ValueError(
            f"a mixture of {components} components fitted to {num_examples} training pairs: "
            f"both must be >= 1 (model.joint_mixture_components / --mixture_components, "
            f"model.joint_mixture_examples / --mixture_examples)"
        )
    pairs = examples(config, num_examples, config.data.train_split, data_dir)
    if len(pairs["text"]) < components:
        raise ValueError(
            f"a mixture of {components} components (model.joint_mixture_components, "
            f"--mixture_components) needs at least as many training pairs, and "
            f"{num_examples} asked (model.joint_mixture_examples, --mixture_examples) gave "
            f"{len(pairs['text'])}: lower the components"
        )
    key_codes, key_fit = jax.random.split(jax.random.PRNGKey(seed))
    codes = parallel.BatchedMap(lambda s, x, t, i: family.posterior(s[0], x, t, s[1], i))(
        (variables, key_codes),
        pairs["image"],
        pairs["text"],
        np.arange(len(pairs["text"]), dtype=np.uint32),
        batch_size=batch_size,
    )
    mixture = jax.jit(latent_mixture.fit, static_argnums=1)(codes, components, key_fit)
    log.info(
        "joint prior: %d Gaussians fitted to the codes of %d training pairs", components, len(codes)
    )
    return {**variables, "latent_mixture": mixture}


def _joint_field(config, name):
    return config.model.get(name, JOINT_PRIOR_DEFAULTS[name])
