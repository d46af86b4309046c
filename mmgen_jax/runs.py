"""A trained run, read back: its config, family and sampling variables from a checkpoint,
and batched, data-parallel generation. Shared by `sample` and `evaluate` (no flags here)."""

import json
import os

import jax
import ml_collections
import numpy as np

from mmgen_jax import checkpoint, families, parallel

# Sampling-time model fields a command may change (`sample`/`evaluate` flags of these names):
# those of models that sample by integrating an ODE (configs/flow.py).
SAMPLING_FIELDS = ("guidance", "sample_steps", "sampler")


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
