"""Model families, registered by name: each implements the contract of `families/base.py`."""

from mmgen_jax.families import base
from mmgen_jax.families.evaluator import Evaluator
from mmgen_jax.families.flow import Flow
from mmgen_jax.families.gan import GAN
from mmgen_jax.families.vae import VAE

FAMILIES = {
    name: base.check(cls)
    for name, cls in {"gan": GAN, "vae": VAE, "flow": Flow, "evaluator": Evaluator}.items()
}


def get(name):
    if name not in FAMILIES:
        raise ValueError(f"unknown config.model.family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
