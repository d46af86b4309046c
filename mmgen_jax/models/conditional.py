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
    num_classes: int = 0  # > 0: a label head on the caption embedding (sown, see below)

    def setup(self):
        if self.num_classes:
            self.text_classes = nn.Dense(self.num_classes)

    def encode(self, tokens, train: bool):
        embedding = self.encoder(tokens, train=train)
        if self.num_classes:
            # Which label does the caption name? Read via mutable=["intermediates"], it gives
            # the caption encoder a direct training signal where the dataset has labels.
            logits = self.text_classes(embedding)
            self.sow("intermediates", "text_class_logits", logits.astype("float32"))
        return embedding

    def score(self, inputs, embedding, train: bool):
        return self.net(inputs, embedding, train=train)

    def __call__(self, inputs, tokens, train: bool):
        return self.score(inputs, self.encode(tokens, train), train)


class PrecomputedText(nn.Module):
    """The identity 'encoder': the batch carries caption embeddings already (benchmarks)."""

    def __call__(self, embeddings, train: bool):
        del train
        return embeddings.astype("float32")
