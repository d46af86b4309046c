"""Model families: each maps a config to state, init, a per-device train step and generation."""

from mmgen_jax.families.evaluator import Evaluator
from mmgen_jax.families.gan import GAN
from mmgen_jax.families.vae import VAE

FAMILIES = {"gan": GAN, "vae": VAE, "evaluator": Evaluator}


def get(name):
    if name not in FAMILIES:
        raise ValueError(f"unknown config.model.family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
