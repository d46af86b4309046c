"""A small text-conditional U-Net predicting a velocity field v(x_t, t | caption), for the
flow-matching family (32x32 or 64x64 RGB).

Conditioning: one vector per example, the sinusoidal embedding of t plus the pooled caption
embedding, modulates every residual block (FiLM: scale and shift after its GroupNorm);
optionally (`cross_attention`) the feature maps of the lowest resolutions also attend over
the caption's token states. GroupNorm only: nothing is averaged across examples or devices,
so a step's result never depends on how the batch is split.

Resampling is average pooling and nearest-neighbour repetition, each followed by a stride-1
3x3 convolution: no strided or transposed convolution, whose gradients XLA:CPU runs slowly
(models/layers.py).
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Dtype

from mmgen_jax.models import text as text_lib


def timestep_embedding(t, dim, max_period=10_000.0):
    """Sinusoidal features (B, dim) of times t (B,) in [0, 1] (scaled by 1000, as the
    embedding's frequencies were laid out for integer diffusion steps)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def _groups(channels, groups):
    """The largest group count <= `groups` that divides `channels`."""
    return next(g for g in range(min(groups, channels), 0, -1) if channels % g == 0)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> GroupNorm, FiLM(cond) -> SiLU -> conv, plus the input
    (projected by a 1x1 conv when the width changes)."""

    features: int
    groups: int = 8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cond):
        conv = lambda name: nn.Conv(self.features, (3, 3), dtype=self.dtype, name=name)
        h = nn.GroupNorm(_groups(x.shape[-1], self.groups), dtype=self.dtype, name="norm1")(x)
        h = conv("conv1")(nn.silu(h))
        h = nn.GroupNorm(_groups(self.features, self.groups), dtype=self.dtype, name="norm2")(h)
        scale, shift = jnp.split(
            nn.Dense(2 * self.features, dtype=self.dtype, name="film")(cond), 2, -1
        )
        h = h * (1 + scale[:, None, None]) + shift[:, None, None]
        # Zero-initialised last conv: each block starts as the identity (stable deep start).
        h = nn.Conv(
            self.features, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype, name="conv2"
        )(nn.silu(h))
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), dtype=self.dtype, name="skip")(x)
        return x + h


class CrossAttention(nn.Module):
    """Pixels (queries) attend over the caption's real tokens (keys and values); residual."""

    num_heads: int = 4
    groups: int = 8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, states, valid):
        b, hgt, wid, c = x.shape
        q = nn.GroupNorm(_groups(c, self.groups), dtype=self.dtype, name="norm")(x)
        q = q.reshape(b, hgt * wid, c)
        kv = nn.LayerNorm(dtype=self.dtype, name="norm_tokens")(states)
        out = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            out_kernel_init=nn.initializers.zeros,
            dtype=self.dtype,
            name="attn",
        )(q, kv, mask=valid[:, None, None, :])
        return x + out.reshape(b, hgt, wid, c)


class UNet(nn.Module):
    """Velocity network: (x_t (B, S, S, 3), t (B,), caption vector (B, D), token states
    (B, L, W) and mask (B, L) or None) -> velocity (B, S, S, 3), float32.

    Attributes:
        width: channels at full resolution; level i has width * channel_mults[i].
        channel_mults: one entry per resolution level (halving the size each time).
        num_res_blocks: residual blocks per level on the way down (and up).
        cross_attention: attend over the token states at levels of size <= attention_size.
        attention_size: the largest feature-map size with cross-attention.
        cond_dim: size of the FiLM conditioning vector (time + caption).
        layout_map: the conditioning vector also paints a map added to the lowest-resolution
            features (Dense to size x size x channels; its bias is a learned position
            embedding). FiLM scales channels alike at every position, and convolutions are
            translation-equivariant, so without it the caption reaches *where* to draw only
            through the zero padding.
    """

    width: int = 32
    channel_mults: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    cross_attention: bool = False
    attention_size: int = 8
    cond_dim: int = 128
    layout_map: bool = False
    num_heads: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, caption, states=None, valid=None):
        if self.cross_attention and states is None:
            raise ValueError("cross_attention=True needs the caption's token states")
        size = x.shape[1]
        if size % 2 ** (len(self.channel_mults) - 1):
            raise ValueError(
                f"image size {size} does not halve {len(self.channel_mults) - 1} times: "
                f"use fewer model.channel_mults or a size divisible by "
                f"{2 ** (len(self.channel_mults) - 1)}"
            )
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)
        cond = dense(self.cond_dim, "time_in")(timestep_embedding(t, self.width))
        cond = dense(self.cond_dim, "time_out")(nn.silu(cond))
        cond = nn.silu(cond + dense(self.cond_dim, "caption")(caption))

        def attend(h, name):
            if self.cross_attention and h.shape[1] <= self.attention_size:
                return CrossAttention(self.num_heads, dtype=self.dtype, name=name)(h, states, valid)
            return h

        h = nn.Conv(self.width, (3, 3), dtype=self.dtype, name="stem")(x.astype(self.dtype))
        skips = []
        for level, mult in enumerate(self.channel_mults):
            for i in range(self.num_res_blocks):
                h = ResBlock(self.width * mult, dtype=self.dtype, name=f"down{level}_{i}")(h, cond)
                h = attend(h, f"down{level}_{i}_attn")
            skips.append(h)
            if level < len(self.channel_mults) - 1:
                h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        if self.layout_map:
            layout = dense(h.shape[1] * h.shape[2] * h.shape[3], "layout")(cond)
            h = h + layout.reshape(h.shape)
        h = ResBlock(h.shape[-1], dtype=self.dtype, name="mid0")(h, cond)
        h = attend(h, "mid_attn")
        h = ResBlock(h.shape[-1], dtype=self.dtype, name="mid1")(h, cond)
        for level in reversed(range(len(self.channel_mults))):
            h = jnp.concatenate([h, skips[level]], axis=-1)
            for i in range(self.num_res_blocks):
                features = self.width * self.channel_mults[level]
                h = ResBlock(features, dtype=self.dtype, name=f"up{level}_{i}")(h, cond)
                h = attend(h, f"up{level}_{i}_attn")
            if level > 0:
                # To the next level's width: its full-resolution conv is the costlier one.
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                features = self.width * self.channel_mults[level - 1]
                h = nn.Conv(features, (3, 3), dtype=self.dtype, name=f"upsample{level}")(h)
        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1], 8), dtype=self.dtype, name="norm_out")(h))
        out = nn.Conv(3, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype, name="out")
        return out(h).astype(jnp.float32)


class TextToVelocity(nn.Module):
    """The caption encoder (models/text.py, as the GAN and VAE use it) feeding the U-Net.

    `encode` runs once per caption batch; `velocity` reads its result at every ODE step.
    With `num_classes` > 0, `caption_classes` names the label from the pooled caption: a
    training signal that teaches the encoder to read the label where the dataset has one
    (the velocity loss alone reaches the encoder only through FiLM, weakly)."""

    encoder: text_lib.TextEncoder
    unet: UNet
    num_classes: int = 0

    def setup(self):
        if self.num_classes:
            self.text_classes = nn.Dense(self.num_classes)

    def encode(self, tokens):
        """-> (pooled caption (B, D), token states (B, L, W), mask of real tokens (B, L))."""
        return self.encoder(tokens)

    def velocity(self, x, t, text):
        pooled, states, valid = text
        if not self.unet.cross_attention:
            states = valid = None
        return self.unet(x, t, pooled, states, valid)

    def caption_classes(self, text):
        """Label logits (B, num_classes) from the pooled caption of `encode`."""
        return self.text_classes(text[0]).astype(jnp.float32)

    def __call__(self, x, t, tokens):
        return self.velocity(x, t, self.encode(tokens))

    def with_caption_classes(self, x, t, tokens):
        """The velocity and the label logits (None without a label head): every parameter
        is used, so `init` builds them all through this method."""
        text = self.encode(tokens)
        logits = self.caption_classes(text) if self.num_classes else None
        return self.velocity(x, t, text), logits
