"""Text-conditional DCGAN generator and discriminator (NHWC).

At `image_size=32`, `base_width=64` and a 128-d text embedding these are exactly the networks of
the PyTorch peer benchmark (shared/peers/SPEC.md): G has 1,609,731 parameters with 100-d noise,
D ('concat') 680,001.

BatchNorm uses batch statistics when `train` and the running averages otherwise. Inside a
data-parallel step set `axis_name` to the mapped axis (e.g. 'data') so batch statistics are
averaged over all devices, i.e. computed over the global batch. Outside a mapped context use
`axis_name=None`, or `train=False` (which needs no statistics), e.g. for `init` and sampling.
"""

import math
from typing import Literal

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Dtype

from mmgen_jax.models.layers import (
    Conv2xDown,
    ConvTranspose2x,
    Impl,
    ResizeConv2x,
    icnr,
    minibatch_stddev,
)

NORMS = ("batch", "none")
# Generator.upsample: "transpose" (4x4 stride-2 transposed conv, default init), "icnr" (the
# same layer and parameters, initialised without checkerboard), "resize_conv" (nearest 2x
# then a 3x3 conv: other parameters), "icnr_resize_out" (icnr inside, resize_conv for the
# output step only: its pixels come from one shared kernel, at a small share of the cost of
# resize_conv everywhere, whose wide inner layers are slow on CPU).
UPSAMPLES = ("transpose", "icnr", "resize_conv", "icnr_resize_out")
D_NORMS = ("batch", "spectral")
CONDITIONINGS = ("concat", "projection")


def _num_scale_steps(image_size: int) -> int:
    """How many 2x steps separate a 4x4 map from `image_size`; checks it is 4 * 2^n, n >= 1."""
    n = round(math.log2(image_size / 4)) if image_size >= 8 else 0
    if n < 1 or 4 * 2**n != image_size:
        raise ValueError(
            f"image_size must be 4 * 2^n with n >= 1 (8, 16, 32, ...), got {image_size}"
        )
    return n


def _batch_norm(train: bool, axis_name: str | None, dtype: Dtype, name: str) -> nn.BatchNorm:
    # momentum 0.9 keeps 10% of each new batch: PyTorch's momentum=0.1.
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        axis_name=axis_name,
        dtype=dtype,
        name=name,
    )


class Generator(nn.Module):
    """(z (B, nz), text_emb (B, E)) -> images (B, S, S, out_channels) in [-1, 1], float32.

    Dense(text_proj_dim) on the text embedding, concatenated with z -> Dense to a 4x4xC0 map ->
    BN -> ReLU -> [ConvTranspose2x -> BN -> ReLU] x (n_up - 1), channels halving down to
    `base_width` -> ConvTranspose2x(out_channels, with bias) -> tanh, where n_up = log2(S / 4)
    and C0 = base_width * 2^(n_up - 1).

    Attributes:
        impl: 'fast' or 'textbook' upsampling (see `layers`); same parameters either way.
        upsample: one of UPSAMPLES: how each 2x step is built and initialised ('resize_conv'
            ignores `impl`).
        norm: 'batch', or 'none' (no normalisation; the convolutions then get a bias).
        axis_name: mapped axis to average BatchNorm statistics over, or None.
        dtype: computation dtype (e.g. bfloat16 on accelerators); parameters stay float32.
    """

    image_size: int = 32
    base_width: int = 64
    out_channels: int = 3
    text_proj_dim: int = 128
    impl: Impl = "fast"
    upsample: Literal["transpose", "icnr", "resize_conv", "icnr_resize_out"] = "transpose"
    norm: Literal["batch", "none"] = "batch"
    axis_name: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z, text_emb, train: bool):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {self.upsample!r}")
        n_up = _num_scale_steps(self.image_size)
        width = self.base_width * 2 ** (n_up - 1)
        use_bn = self.norm == "batch"

        def norm_relu(h, name):
            if use_bn:
                h = _batch_norm(train, self.axis_name, self.dtype, name)(h)
            return nn.relu(h)

        t = nn.Dense(self.text_proj_dim, dtype=self.dtype, name="text_proj")(text_emb)
        h = jnp.concatenate([z.astype(t.dtype), t], axis=-1)
        h = nn.Dense(4 * 4 * width, use_bias=not use_bn, dtype=self.dtype, name="fc")(h)
        h = norm_relu(h.reshape(-1, 4, 4, width), "bn0")
        for i in range(1, n_up):
            width //= 2
            h = self._up(width, not use_bn, f"up{i}", last=False)(h)
            h = norm_relu(h, f"bn{i}")
        h = self._up(self.out_channels, True, f"up{n_up}", last=True)(h)
        return jnp.tanh(h).astype(jnp.float32)

    def _up(self, features, use_bias, name, last):
        if self.upsample == "resize_conv" or (last and self.upsample == "icnr_resize_out"):
            return ResizeConv2x(features, use_bias=use_bias, dtype=self.dtype, name=name)
        icnr_init = self.upsample in ("icnr", "icnr_resize_out")
        extra = {"kernel_init": icnr()} if icnr_init else {}
        return ConvTranspose2x(
            features, use_bias=use_bias, impl=self.impl, dtype=self.dtype, name=name, **extra
        )


class Discriminator(nn.Module):
    """(images (B, S, S, C), text_emb (B, E)) -> real/fake logits (B,), float32.

    Conv2xDown(base_width, bias) -> LeakyReLU(0.2) -> [Conv2xDown -> BN -> LeakyReLU(0.2)] per
    further 2x step, channels doubling, down to a 4x4 map h, flattened in NHWC order. Then
    - 'concat': Dense(1) of [h, Dense(text_proj_dim)(text_emb)] (the peer benchmark's head);
    - 'projection' (Miyato & Koyama, 2018): Dense(1)(h) + <mean_xy(h), Dense(C)(text_emb)>.
      The text is projected against the spatially pooled features, as in the paper: whether the
      image matches the caption should not depend on where in the 4x4 map the evidence lies,
      and the text projection stays C-wide instead of 16C.

    Attributes:
        text_proj_dim: width of the text projection for 'concat' ('projection' uses C).
        conditioning: 'concat' or 'projection', as above.
        num_classes: > 0 adds an auxiliary head classifying the image into the dataset's
            labels; its logits are sown to "intermediates"/"class_logits".
        twin_classifier: with `num_classes`, a second head of the same shape (TAC-GAN's twin,
            trained on generated images), sown to "intermediates"/"twin_logits".
        norm: 'batch' (BatchNorm after every conv but the first: DCGAN, the peer benchmark)
            or 'spectral' (spectral normalisation of every layer, no BatchNorm: SNGAN).
        minibatch_std: > 0 appends the minibatch standard deviation over groups of this many
            examples of the global batch as a channel of the 4x4 map
            (`layers.minibatch_stddev`); 0 = off.
        impl: 'fast' or 'textbook' downsampling (see `layers`); same parameters either way.
            On XLA:CPU 'textbook' is the faster of the two for this network.
        axis_name: mapped axis to average BatchNorm statistics over, or None.
        dtype: computation dtype (e.g. bfloat16 on accelerators); parameters stay float32.
    """

    image_size: int = 32
    base_width: int = 64
    text_proj_dim: int = 128
    conditioning: Literal["concat", "projection"] = "concat"
    norm: Literal["batch", "spectral"] = "batch"
    num_classes: int = 0
    twin_classifier: bool = False
    minibatch_std: int = 0
    impl: Impl = "fast"
    axis_name: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images, text_emb, train: bool):
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(
                f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}"
            )
        if self.norm not in D_NORMS:
            raise ValueError(f"norm must be one of {D_NORMS}, got {self.norm!r}")
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} images, got shape {images.shape}"
            )
        n_down = _num_scale_steps(self.image_size)
        spectral = self.norm == "spectral"

        def layer(module):
            # Spectral normalisation (Miyato et al., 2018) bounds every layer's Lipschitz
            # constant; its power-iteration vectors live in 'batch_stats'.
            if spectral:
                return lambda x: nn.SpectralNorm(module)(x, update_stats=train)
            return module

        width = self.base_width
        h = layer(Conv2xDown(width, impl=self.impl, dtype=self.dtype, name="down1"))(images)
        h = nn.leaky_relu(h, 0.2)
        for i in range(2, n_down + 1):
            width *= 2
            h = layer(
                Conv2xDown(
                    width, use_bias=spectral, impl=self.impl, dtype=self.dtype, name=f"down{i}"
                )
            )(h)
            if not spectral:
                h = _batch_norm(train, self.axis_name, self.dtype, f"bn{i}")(h)
            h = nn.leaky_relu(h, 0.2)

        # The variety channel feeds the flat heads; the caption projection reads h alone.
        flat = h
        if self.minibatch_std:
            flat = minibatch_stddev(h, self.minibatch_std, self.axis_name if train else None)
        flat = flat.reshape(h.shape[0], -1)
        if self.num_classes:  # auxiliary classifier head (TAC-GAN), read via "intermediates"
            classes = layer(nn.Dense(self.num_classes, dtype=self.dtype, name="classes"))(flat)
            self.sow("intermediates", "class_logits", classes.astype(jnp.float32))
            if self.twin_classifier:
                twin = layer(nn.Dense(self.num_classes, dtype=self.dtype, name="twin_classes"))
                self.sow("intermediates", "twin_logits", twin(flat).astype(jnp.float32))
        if self.conditioning == "concat":
            t = layer(nn.Dense(self.text_proj_dim, dtype=self.dtype, name="text_proj"))(text_emb)
            logits = layer(nn.Dense(1, dtype=self.dtype, name="out"))(
                jnp.concatenate([flat, t], axis=-1)
            )
        else:
            t = layer(nn.Dense(width, dtype=self.dtype, name="text_proj"))(text_emb)
            pooled = h.mean(axis=(1, 2))
            logits = layer(nn.Dense(1, dtype=self.dtype, name="out"))(flat)
            logits = logits + jnp.sum(pooled * t, axis=-1, keepdims=True)
            # The two sides of the projection, for losses that align images with captions
            # (read with mutable=["intermediates"]).
            self.sow("intermediates", "image_features", pooled.astype(jnp.float32))
            self.sow("intermediates", "text_features", t.astype(jnp.float32))
        return logits[:, 0].astype(jnp.float32)
