"""Attribute classifier: a small CNN with one softmax head per attribute (NHWC).

It is the project's domain evaluator: its penultimate features are the space in which
generated and real images are compared (Fréchet distance, KID, precision/recall) and its
heads read the attributes a caption asks for (text->image consistency).
"""

from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp


class AttributeClassifier(nn.Module):
    """images (B, H, W, 3) in [-1, 1] -> (features (B, feature_dim), {head: logits (B, K)}).

    Three stride-2 3x3 convolutions (width, 2 width, 4 width channels) with GroupNorm and
    ReLU, flattened (the digit's shape needs the layout), Dense(feature_dim) + ReLU (the features), then one Dense
    head per entry of `heads` ({name: number of classes}). GroupNorm rather than BatchNorm:
    the features of an image must not depend on the other images of its batch.
    """

    heads: Mapping[str, int]
    width: int = 32
    feature_dim: int = 128

    @nn.compact
    def __call__(self, images):
        x = images.astype(jnp.float32)
        for i, channels in enumerate((self.width, 2 * self.width, 4 * self.width)):
            x = nn.Conv(channels, (3, 3), strides=(2, 2), padding="SAME", name=f"conv{i}")(x)
            x = nn.relu(nn.GroupNorm(num_groups=8, name=f"norm{i}")(x))
        x = x.reshape(x.shape[0], -1)
        features = nn.relu(nn.Dense(self.feature_dim, name="features")(x))
        logits = {
            name: nn.Dense(k, name=f"head_{name}")(features) for name, k in self.heads.items()
        }
        return features, logits
