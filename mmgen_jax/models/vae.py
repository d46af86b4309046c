"""Networks of the multimodal VAE: Gaussian encoders for images and captions, an image decoder
and an autoregressive (GRU) caption decoder, all around one latent z.

No losses and no sampling loops here: `mmgen_jax.families.vae` combines the methods of
`MultimodalVAE` (via `apply(..., method=...)`) into objectives and generation.
"""

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Dtype

from mmgen_jax.data import tokenizer
from mmgen_jax.models import minilm
from mmgen_jax.models.layers import Conv2xDown, ConvTranspose2x
from mmgen_jax.models.text import TextEncoder

# The caption decoder's first input; also with WordPiece, where id 1 is an unused piece and
# captions themselves start with [CLS].
BOS_ID = tokenizer.BOS
LOGVAR_LIMIT = 10.0  # encoders' log-variances are soft-clipped to +-this, keeping PoE finite


def _gaussian_head(h, latent_dim, name):
    """Dense -> (mean, logvar), both (B, latent_dim), in float32."""
    stats = nn.Dense(2 * latent_dim, name=name)(h).astype(jnp.float32)
    mean, logvar = jnp.split(stats, 2, axis=-1)
    return mean, LOGVAR_LIMIT * jnp.tanh(logvar / LOGVAR_LIMIT)


class ImageEncoder(nn.Module):
    """(B, S, S, 3) in [-1, 1] -> q(z|x) as (mean, logvar): stride-2 convs halve S to 4."""

    latent_dim: int
    width: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        h = images.astype(self.dtype)
        size, i = images.shape[1], 0
        while size > 4:
            # 'textbook' strided convs: the fastest downsampling on XLA:CPU (models/layers.py).
            h = Conv2xDown(self.width * 2**i, impl="textbook", dtype=self.dtype, name=f"down{i}")(h)
            h = nn.swish(h)
            size, i = size // 2, i + 1
        return _gaussian_head(h.reshape(h.shape[0], -1), self.latent_dim, "posterior")


class CaptionEncoder(nn.Module):
    """Token ids (B, L) -> q(z|t) as (mean, logvar), through the shared `TextEncoder`, or
    the pretrained MiniLM (`kind="minilm"`: WordPiece ids; `trainable` or frozen)."""

    latent_dim: int
    max_len: int
    embed_dim: int = 64
    width: int = 64
    num_layers: int = 2
    text_dim: int = 128
    kind: str = "conv"
    dtype: Dtype = jnp.float32
    trainable: bool = False

    @nn.compact
    def __call__(self, tokens):
        if self.kind == "minilm":
            h = minilm.CaptionEncoder(
                self.text_dim, self.trainable, dtype=self.dtype, name="encoder"
            )(tokens)
            return _gaussian_head(nn.swish(h), self.latent_dim, "posterior")
        h = TextEncoder(
            max_len=self.max_len,
            embed_dim=self.embed_dim,
            width=self.width,
            num_layers=self.num_layers,
            out_dim=self.text_dim,
            kind=self.kind,
            dtype=self.dtype,
            name="encoder",
        )(tokens)
        return _gaussian_head(nn.swish(h), self.latent_dim, "posterior")


class ImageDecoder(nn.Module):
    """z (B, D) -> image mean (B, S, S, 3) in [-1, 1]: dense to 4x4, then 2x upsampling
    with the fast sub-pixel transposed convolution (models/layers.py)."""

    image_size: int
    width: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        ups = (self.image_size // 4).bit_length() - 1  # number of 2x steps from 4x4
        if 4 * 2**ups != self.image_size:
            raise ValueError(f"image_size must be 4 * 2^k, got {self.image_size}")
        channels = self.width * 2 ** (ups - 1)
        h = nn.Dense(4 * 4 * channels, dtype=self.dtype, name="project")(z)
        h = nn.swish(h).reshape(z.shape[0], 4, 4, channels)
        for i in range(ups - 1):
            channels //= 2
            h = nn.swish(ConvTranspose2x(channels, impl="fast", dtype=self.dtype, name=f"up{i}")(h))
        h = ConvTranspose2x(3, impl="fast", dtype=self.dtype, name=f"up{ups - 1}")(h)
        return jnp.tanh(h.astype(jnp.float32))


class CaptionDecoder(nn.Module):
    """An autoregressive GRU language model of the caption given z.

    `__call__(z, inputs, carry)` runs the GRU over `inputs` (B, T) from `carry` (None: the
    start state computed from z) and returns (carry, logits (B, T, vocab)): one call over the
    whole shifted caption teacher-forces it in training; calls with T = 1 generate it token
    by token. z enters both the start state and every step's input.
    """

    vocab_size: int = tokenizer.VOCAB_SIZE
    embed_dim: int = 64
    hidden: int = 128
    dtype: Dtype = jnp.float32

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype)
        self.condition = nn.Dense(self.embed_dim, dtype=self.dtype)
        self.start = nn.Dense(self.hidden, dtype=self.dtype)
        self.rnn = nn.RNN(nn.GRUCell(self.hidden, dtype=self.dtype), return_carry=True)
        self.out = nn.Dense(self.vocab_size, dtype=self.dtype)

    def initial_carry(self, z):
        return jnp.tanh(self.start(z))

    def __call__(self, z, inputs, carry=None):
        if carry is None:
            carry = self.initial_carry(z)
        x = self.embed(inputs)
        cond = jnp.broadcast_to(self.condition(z)[:, None], x.shape[:2] + (self.embed_dim,))
        carry, h = self.rnn(jnp.concatenate([x, cond], axis=-1), initial_carry=carry)
        return carry, self.out(h).astype(jnp.float32)


def shift_right(tokens):
    """Teacher-forcing inputs: BOS, then the caption without its last position."""
    bos = jnp.full((tokens.shape[0], 1), BOS_ID, tokens.dtype)
    return jnp.concatenate([bos, tokens[:, :-1]], axis=1)


class MultimodalVAE(nn.Module):
    """The four networks; `__call__` runs each once (for `init`)."""

    latent_dim: int
    image_size: int
    max_text_len: int
    image_width: int = 32
    text_embed_dim: int = 64
    text_width: int = 64
    text_layers: int = 2
    text_dim: int = 128
    text_encoder: str = "conv"
    text_encoder_trainable: bool = False  # text_encoder="minilm": fine-tune or keep frozen
    vocab_size: int = tokenizer.VOCAB_SIZE  # decoder ids: bytes, or minilm.VOCAB_SIZE (WordPiece)
    decoder_hidden: int = 128
    num_classes: int = 0  # > 0: a label classifier on z (auxiliary head; 0 = none)
    dtype: Dtype = jnp.float32

    def setup(self):
        self.image_encoder = ImageEncoder(self.latent_dim, self.image_width, self.dtype)
        self.caption_encoder = CaptionEncoder(
            self.latent_dim,
            self.max_text_len,
            self.text_embed_dim,
            self.text_width,
            self.text_layers,
            self.text_dim,
            self.text_encoder,
            self.dtype,
            self.text_encoder_trainable,
        )
        self.image_decoder = ImageDecoder(self.image_size, self.image_width, self.dtype)
        self.caption_decoder = CaptionDecoder(
            vocab_size=self.vocab_size,
            embed_dim=self.text_embed_dim,
            hidden=self.decoder_hidden,
            dtype=self.dtype,
        )
        if self.num_classes:
            self.classifier = nn.Dense(self.num_classes)

    def __call__(self, images, tokens):
        z, _ = self.encode_image(images)
        self.encode_text(tokens)
        if self.num_classes:
            self.classify(z)
        return self.decode_image(z), self.decode_text(z, shift_right(tokens))

    def encode_image(self, images):
        return self.image_encoder(images)

    def encode_text(self, tokens):
        return self.caption_encoder(tokens)

    def decode_image(self, z):
        return self.image_decoder(z)

    def decode_text(self, z, inputs):
        """Teacher-forced next-token logits (B, L, vocab) from the decoder inputs: the caption
        shifted right (`shift_right`), possibly with words dropped."""
        return self.caption_decoder(z, inputs)[1]

    def classify(self, z):
        """Label logits (B, num_classes) from z (the optional auxiliary head)."""
        return self.classifier(z).astype(jnp.float32)

    def start_text(self, z):
        """The caption decoder's state before its first token."""
        return self.caption_decoder.initial_carry(z)

    def decode_text_step(self, z, token, carry):
        """One generation step: the previous token (B,) -> (carry, logits (B, vocab))."""
        carry, logits = self.caption_decoder(z, token[:, None], carry)
        return carry, logits[:, 0]
