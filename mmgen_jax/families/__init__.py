"""Model families: each maps a config to state, init, a per-device train step and generation."""

from mmgen_jax.families.gan import GAN

FAMILIES = {"gan": GAN}


def get(name):
    if name not in FAMILIES:
        raise ValueError(f"unknown config.model.family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
