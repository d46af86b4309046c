"""Glue: a caption encoder feeding a conditional network."""
import flax.linen as nn


class TextConditioned(nn.Module):
    """`net(inputs, encoder(tokens))`: each network owns (and trains) its caption encoder."""

    encoder: nn.Module
    net: nn.Module

    def __call__(self, inputs, tokens, train: bool):
        return self.net(inputs, self.encoder(tokens, train=train), train=train)
