"""Glue: a caption encoder feeding a conditional network."""

import flax.linen as nn


class TextConditioned(nn.Module):
    """`net(inputs, encoder(tokens))`: each network owns (and trains) its caption encoder.

    `encode` and `score` are exposed separately (`apply(..., method="encode")`) so a
    step that runs the network on several batches with the same captions encodes
    them once.
    """

    encoder: nn.Module
    net: nn.Module

    def encode(self, tokens, train: bool):
        return self.encoder(tokens, train=train)

    def score(self, inputs, embedding, train: bool):
        return self.net(inputs, embedding, train=train)

    def __call__(self, inputs, tokens, train: bool):
        return self.score(inputs, self.encode(tokens, train), train)


class PrecomputedText(nn.Module):
    """The identity 'encoder': the batch carries caption embeddings already (benchmarks)."""

    def __call__(self, embeddings, train: bool):
        del train
        return embeddings.astype("float32")
