"""Stride-2, 4x4 convolutions (the DCGAN up/down blocks) and exact fast forms of them.

`ConvTranspose2x` and `Conv2xDown` hold the same parameters as Flax's `nn.ConvTranspose` and
`nn.Conv` with a (4, 4) kernel, stride 2 and PyTorch's padding of 1, so their checkpoints are
interchangeable; `impl` picks how the arithmetic is laid out, never what it computes:

- `'textbook'`: the strided (transposed) convolution exactly as Flax writes it.
- `'fast'`: an exact rewrite as stride-1 convolutions, with no dilated convolution in the
  forward pass or in any derivative. Differentiating a strided convolution yields
  *lhs-dilated* convolutions (zeros between input pixels). XLA:CPU runs those with large
  windows as a naive loop, so the kernel gradient of `nn.ConvTranspose` (an lhs-dilated
  convolution with an output-sized window) costs ~20x its forward pass.

Measured on XLA:CPU (jax 0.10.2, 2 cores, batch 64, DCGAN-32 shapes), forward + backward:
`ConvTranspose2x` 'fast' is 6-9x faster than 'textbook' on the wide layers, 1.5-1.8x on the
last one. `Conv2xDown` 'fast' is 1.2-1.7x *slower*: the strided convolution's own gradients take
fast paths there (its lhs-dilated input gradient has only a 4x4 window), so on CPU
discriminators should use 'textbook'. A whole DCGAN-32 train step runs 2.2x faster with a 'fast'
generator and a 'textbook' discriminator than all-'textbook', and ~20% slower with both 'fast'.

Both layers take NHWC inputs with exactly one batch axis. Kernels are HWIO, applied as a
cross-correlation (Flax's convention). To load PyTorch weights, use `w.permute(2, 3, 1, 0)` for
`Conv2d` and `w.permute(2, 3, 0, 1).flip(0, 1)` for `ConvTranspose2d` (PyTorch's transposed
convolution scatters, i.e. correlates with the spatially flipped kernel).
"""

import math
from collections.abc import Callable
from typing import ClassVar, Literal

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Dtype, Initializer, PrecisionLike
from jax import lax

Impl = Literal["fast", "textbook"]
IMPLS = ("fast", "textbook")

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_transpose_2x(x, kernel, precision: PrecisionLike = None):
    """PyTorch's `ConvTranspose2d(k=4, s=2, p=1)` (up to the kernel flip) via sub-pixel phases.

    Output pixel 2m + r (per spatial axis, r in {0, 1}) only ever meets kernel taps r and r + 2,
    applied to input pixels m - 1 + r and m + r. So each of the four output phases (rh, rw) is a
    stride-1 2x2 convolution of the input with `kernel[rh::2, rw::2]`, padded by one pixel on the
    side the phase reaches past the border; interleaving the phases (depth-to-space) gives the
    (B, 2H, 2W, C) result.

    Four separate convolutions measured fastest on XLA:CPU. One convolution over all phases needs
    a 3x3 kernel padded with zeros (2.25x the arithmetic, ~2x slower end to end); one 2x2
    convolution over the input padded on both sides, cropped per phase, has a kernel gradient
    ~30x slower than this.
    """
    b, h, w, _ = x.shape
    phases = [
        [
            lax.conv_general_dilated(
                x,
                kernel[rh::2, rw::2],
                window_strides=(1, 1),
                padding=((1 - rh, rh), (1 - rw, rw)),
                dimension_numbers=_NHWC,
                precision=precision,
            )
            for rw in (0, 1)
        ]
        for rh in (0, 1)
    ]
    # (B, H, 2[rh], W, 2[rw], C): row-major order of this shape is the interleaved image.
    y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
    return y.reshape(b, 2 * h, 2 * w, kernel.shape[-1])


def conv_transpose_2x_textbook(x, kernel, precision: PrecisionLike = None):
    """What `nn.ConvTranspose(features, (4, 4), strides=2, padding=2)` computes.

    Padding the 2x-dilated input by k - 1 - p = 2 on each side gives PyTorch's p = 1 geometry.
    """
    return lax.conv_transpose(
        x,
        kernel,
        strides=(2, 2),
        padding=((2, 2), (2, 2)),
        dimension_numbers=_NHWC,
        precision=precision,
    )


def conv_2x_down(x, kernel, precision: PrecisionLike = None):
    """PyTorch's `Conv2d(k=4, s=2, p=1)` via space-to-depth.

    Per spatial axis, output m reads padded pixels 2m .. 2m + 3, i.e. pixel pairs (blocks) m and
    m + 1. Folding every 2x2 block into channels makes this a stride-1 2x2 convolution with
    4 * C_in input channels, whose input gradient is an ordinary convolution as well. For odd
    sizes PyTorch's last window ends on the last real pixel, so only one side is padded there.

    Exact, but slower than `conv_2x_down_textbook` on XLA:CPU (see the module docstring): its
    kernel gradient, a convolution with an 8x8-or-larger window over few output positions,
    runs ~2x slower than the strided convolution's.
    """
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (1, 1 - h % 2), (1, 1 - w % 2), (0, 0)))
    hb, wb = x.shape[1] // 2, x.shape[2] // 2
    x = x.reshape(b, hb, 2, wb, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hb, wb, 4 * c)
    # Kernel tap 2t + r -> block offset t, in-block position r; channel order (rh, rw, c_in).
    k = kernel.reshape(2, 2, 2, 2, c, -1).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, -1)
    return lax.conv_general_dilated(
        x, k, window_strides=(1, 1), padding="VALID", dimension_numbers=_NHWC, precision=precision
    )


def conv_2x_down_textbook(x, kernel, precision: PrecisionLike = None):
    """What `nn.Conv(features, (4, 4), strides=2, padding=1)` computes."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(2, 2),
        padding=((1, 1), (1, 1)),
        dimension_numbers=_NHWC,
        precision=precision,
    )


class _Stride2Conv(nn.Module):
    """Parameters, dtype promotion and bias shared by the two layers below."""

    features: int
    use_bias: bool = True
    impl: Impl = "fast"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    # impl -> fn(x, kernel, precision), set by each layer.
    _fns: ClassVar[dict[str, Callable]]

    @nn.compact
    def __call__(self, x):
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if x.ndim != 4:
            raise ValueError(f"expected NHWC input of rank 4, got shape {x.shape}")
        kernel = self.param(
            "kernel", self.kernel_init, (4, 4, x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = self._fns[self.impl](x, kernel, self.precision)
        return y if bias is None else y + bias


class ConvTranspose2x(_Stride2Conv):
    """`nn.ConvTranspose(features, (4, 4), strides=2, padding=2)`: (B, H, W, C) -> (B, 2H, 2W, F).

    Same parameters (`kernel` (4, 4, C, F), optional `bias`) and initialisers; the function is
    PyTorch's `ConvTranspose2d(C, F, 4, stride=2, padding=1)`.
    """

    _fns: ClassVar[dict[str, Callable]] = {
        "fast": conv_transpose_2x,
        "textbook": conv_transpose_2x_textbook,
    }


def icnr(init: Initializer | None = None) -> Initializer:
    """ICNR initialisation (Aitken et al., 2017) of a `ConvTranspose2x` kernel (4, 4, C, F).

    Output phase r (per axis) uses kernel taps r and r + 2 (see `conv_transpose_2x`), so
    making taps 2t and 2t + 1 equal gives all four phases the same 2x2 kernel: the output is
    then a nearest-neighbour 2x upsampling (shifted by one pixel) of one 2x2 convolution, with
    no phase-periodic (checkerboard) pattern at the start of training. The shared taps are
    `init`'s draw for the full kernel at the even taps, so the scale is `init`'s (default:
    the layer's own, LeCun normal).
    """
    init = init or nn.initializers.lecun_normal()

    def init_fn(key, shape, dtype=jnp.float32):
        if shape[:2] != (4, 4):
            raise ValueError(f"icnr initialises (4, 4, C, F) kernels, got shape {shape}")
        even = init(key, shape, dtype)[::2, ::2]
        return jnp.repeat(jnp.repeat(even, 2, axis=0), 2, axis=1)

    return init_fn


class ResizeConv2x(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 'SAME' convolution: (B, H, W, C) ->
    (B, 2H, 2W, F) (Odena et al., 2016, "Deconvolution and checkerboard artifacts"). Every
    output pixel sees the same kernel, so no pattern of period 2 can arise at any point of
    training; 9/4 the arithmetic of `ConvTranspose2x` and different parameters."""

    features: int
    use_bias: bool = True
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"expected NHWC input of rank 4, got shape {x.shape}")
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return nn.Conv(
            self.features, (3, 3), use_bias=self.use_bias, dtype=self.dtype, name="conv"
        )(x)


class Conv2xDown(_Stride2Conv):
    """`nn.Conv(features, (4, 4), strides=2, padding=1)`: (B, H, W, C) -> (B, H//2, W//2, F).

    Same parameters (`kernel` (4, 4, C, F), optional `bias`) and initialisers; the function is
    PyTorch's `Conv2d(C, F, 4, stride=2, padding=1)`.
    """

    _fns: ClassVar[dict[str, Callable]] = {"fast": conv_2x_down, "textbook": conv_2x_down_textbook}


def minibatch_stddev(x, group_size: int, axis_name: str | None = None):
    """Appends one channel: the feature standard deviation across groups of `group_size`
    examples, averaged over features and positions (Karras et al., 2018). A discriminator
    that sees it can tell a batch of near-copies from real variety, which punishes a
    generator that ignores its noise. Inside a mapped step (`axis_name`) the groups are
    taken over the global batch, so the result does not depend on the device count;
    `group_size` is capped at (a divisor of) the batch."""
    local = x.shape[0]
    everyone = lax.all_gather(x, axis_name, tiled=True) if axis_name else x
    b, h, w, c = everyone.shape
    g = math.gcd(b, group_size)
    groups = everyone.reshape(g, b // g, h, w, c).astype(jnp.float32)
    std = jnp.sqrt(jnp.var(groups, axis=0) + 1e-8).mean(axis=(1, 2, 3))  # (b // g,)
    feature = jnp.tile(std, g)  # example k * (b // g) + j belongs to group j
    if axis_name:
        feature = lax.dynamic_slice_in_dim(feature, lax.axis_index(axis_name) * local, local)
    feature = jnp.broadcast_to(feature[:, None, None, None], (local, h, w, 1))
    return jnp.concatenate([x, feature.astype(x.dtype)], axis=-1)
