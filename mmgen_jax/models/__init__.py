"""Linen networks: DCGAN generator/discriminator, caption encoder, fast stride-2 convolutions."""

from mmgen_jax.models.dcgan import Discriminator, Generator
from mmgen_jax.models.layers import Conv2xDown, ConvTranspose2x
from mmgen_jax.models.text import TextEncoder

__all__ = ["Conv2xDown", "ConvTranspose2x", "Discriminator", "Generator", "TextEncoder"]
