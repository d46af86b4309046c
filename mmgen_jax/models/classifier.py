"""Attribute classifier: small CNNs with one softmax head per attribute (NHWC).

It is the project's domain evaluator: its penultimate features are the space in which
generated and real images are compared (Fréchet distance, KID, precision/recall) and its
heads read the attributes a caption asks for (text->image consistency).
"""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def stroke_map(images, eps=1e-6):
    """images (B, H, W, 3) in [-1, 1] -> (B, H, W, 1) stroke intensity in [-1, 1].

    The colour-free picture of a two-colour image: the background is the median colour of
    the border pixels, the foreground the mean colour of the 10% of pixels farthest from
    it, and each pixel's intensity t in [0, 1] its position on the background -> foreground
    line (x = t fg + (1 - t) bg), at full resolution. For an exact two-colour image t does
    not change under any recolouring, so a head reading it cannot use colour as a cue.
    (The attribute judge reads the same kind of map, pooled to 8x8.)
    """
    x = images.astype(jnp.float32)
    b = x.shape[0]
    border = jnp.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)
    bg = jnp.median(border, axis=1)[:, None, None]  # (B, 1, 1, 3)
    diff = x - bg
    dist = jnp.sum(diff**2, -1).reshape(b, -1)
    far = (dist >= jnp.quantile(dist, 0.9, axis=1, keepdims=True)).astype(jnp.float32)
    flat = x.reshape(b, -1, 3)
    fg = jnp.sum(flat * far[..., None], 1) / jnp.maximum(jnp.sum(far, 1, keepdims=True), 1.0)
    axis = fg[:, None, None] - bg
    t = jnp.sum(diff * axis, -1) / jnp.maximum(jnp.sum(axis**2, -1), eps)
    return jax.lax.stop_gradient(2.0 * jnp.clip(t, 0.0, 1.0)[..., None] - 1.0)


class ConvTrunk(nn.Module):
    """Three stride-2 3x3 convolutions (width, 2 width, 4 width channels) with GroupNorm and
    ReLU, flattened (a digit's shape needs the layout), then Dense(feature_dim) + ReLU.
    GroupNorm rather than BatchNorm: an image's features must not depend on its batch."""

    width: int
    feature_dim: int

    @nn.compact
    def __call__(self, x):
        for i, channels in enumerate((self.width, 2 * self.width, 4 * self.width)):
            x = nn.Conv(channels, (3, 3), strides=(2, 2), padding="SAME", name=f"conv{i}")(x)
            x = nn.relu(nn.GroupNorm(num_groups=8, name=f"norm{i}")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(self.feature_dim, name="features")(x))


class AttributeClassifier(nn.Module):
    """images (B, H, W, 3) in [-1, 1] -> (features (B, feature_dim + colour_feature_dim),
    {head: logits (B, K)}).

    Two trunks: a shape trunk (`width`, `feature_dim`) on the colour-free `stroke_map`,
    read by the `shape_heads` (the digit: colour-invariant by construction), and a colour
    trunk (`colour_width`, `colour_feature_dim`) on the RGB image, read by the other heads
    (the colours). The features are both trunks' penultimate features side by side: shape
    first, then colour.
    """

    heads: Mapping[str, int]
    shape_heads: Sequence[str] = ()
    width: int = 32
    feature_dim: int = 128
    colour_width: int = 8
    colour_feature_dim: int = 32

    @nn.compact
    def __call__(self, images):
        x = images.astype(jnp.float32)
        shape = ConvTrunk(self.width, self.feature_dim, name="shape")(stroke_map(x))
        colour = ConvTrunk(self.colour_width, self.colour_feature_dim, name="colour")(x)
        logits = {
            name: nn.Dense(k, name=f"head_{name}")(shape if name in self.shape_heads else colour)
            for name, k in self.heads.items()
        }
        return jnp.concatenate([shape, colour], -1), logits
