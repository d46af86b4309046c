"""Caption encoder: token ids (B, L), 0 = padding, to one vector per caption (B, out_dim).

Padding is invisible to the result: attention never reads padded keys, the convolutions see
padded positions as zeros (the same zeros their own padding uses), and the final mean runs over
real tokens only. Hence a caption encodes the same whatever length it is padded to, and an empty
(all-padding) caption encodes to `Dense(0)`, its bias, rather than NaN.
"""

from typing import Literal

import flax.linen as nn
import jax.numpy as jnp
from flax.typing import Dtype

from mmgen_jax.data import tokenizer

PAD_ID = tokenizer.PAD
KINDS = ("transformer", "conv")


class TransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention and MLP, each added to the residual stream."""

    num_heads: int
    mlp_ratio: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, valid):
        width = h.shape[-1]
        # Mask keys only: a padded query attends to real tokens and is discarded at pooling.
        mask = valid[:, None, None, :]
        a = nn.LayerNorm(dtype=self.dtype, name="ln_attn")(h)
        h = h + nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, name="attn"
        )(a, mask=mask)
        m = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(h)
        m = nn.Dense(self.mlp_ratio * width, dtype=self.dtype, name="mlp_in")(m)
        m = nn.Dense(width, dtype=self.dtype, name="mlp_out")(nn.gelu(m))
        return h + m


class ConvBlock(nn.Module):
    """Pre-LayerNorm residual 1-D convolution (kernel 3, `dilation`) over the token axis.

    Written as one matrix product to 3 x width (one slice per tap) whose slices are then
    shifted by -d, 0, +d positions and summed: the same convolution, but a plain GEMM,
    which XLA:CPU runs several times faster than its 1-D convolution.
    """

    dilation: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, valid):
        width, d = h.shape[-1], self.dilation
        c = nn.gelu(nn.LayerNorm(dtype=self.dtype, name="ln")(h))
        # Zero padded positions so they read exactly like the sequence's zero padding.
        c = jnp.where(valid[..., None], c, 0)
        taps = nn.Dense(3 * width, use_bias=False, dtype=self.dtype, name="taps")(c)
        before, centre, after = jnp.split(taps, 3, axis=-1)
        # out[t] = c[t-d] W_before + c[t] W_centre + c[t+d] W_after (zeros past the ends)
        before = jnp.pad(before, ((0, 0), (d, 0), (0, 0)))[:, :-d]
        after = jnp.pad(after, ((0, 0), (0, d), (0, 0)))[:, d:]
        bias = self.param("bias", nn.initializers.zeros_init(), (width,))
        return h + before + centre + after + bias


class TextEncoder(nn.Module):
    """Token + learned position embedding -> `num_layers` blocks -> masked mean -> Dense.

    Attributes:
        vocab_size: number of token ids (the byte tokenizer's 256 bytes + specials by default).
        max_len: longest sequence the position table covers; shorter inputs use its prefix.
        embed_dim: token/position embedding size, projected to `width` for the blocks.
        width: residual-stream width of the blocks.
        num_layers: number of blocks.
        out_dim: size of the caption vector.
        kind: 'transformer' (self-attention with `num_heads` heads) or 'conv' (dilated 1-D
            convolutions, dilation doubling per layer).
        dtype: computation dtype; parameters stay float32 and the output is float32.
        return_states: also return the per-token states (B, L, width) and the mask of real
            tokens (B, L), for networks that cross-attend over the caption.
    """

    vocab_size: int = tokenizer.VOCAB_SIZE
    max_len: int = 64
    embed_dim: int = 64
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4
    out_dim: int = 128
    kind: Literal["transformer", "conv"] = "transformer"
    dtype: Dtype = jnp.float32
    return_states: bool = False

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        """tokens: int (B, L) with 0 = padding -> float32 (B, out_dim), or with
        `return_states` (that, float32 token states (B, L, width), bool mask (B, L)).

        `train` is accepted for the shared network interface; the encoder behaves the same in
        both modes (no dropout, no batch statistics).
        """
        del train
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"captions of {length} tokens exceed max_len={self.max_len}")
        valid = tokens != PAD_ID

        h = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="tokens")(tokens)
        pos = self.param("positions", nn.initializers.normal(0.02), (self.max_len, self.embed_dim))
        h = nn.Dense(self.width, dtype=self.dtype, name="embed_proj")(h + pos[:length])
        for i in range(self.num_layers):
            if self.kind == "transformer":
                h = TransformerBlock(self.num_heads, dtype=self.dtype, name=f"block{i}")(h, valid)
            else:
                # Dilations 1, 2, 4, ...: the receptive field grows to whole phrases.
                h = ConvBlock(dilation=2**i, dtype=self.dtype, name=f"block{i}")(h, valid)
        h = nn.LayerNorm(dtype=self.dtype, name="ln_out")(h)

        weights = valid.astype(jnp.float32)[..., None]
        pooled = (h.astype(jnp.float32) * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        out = nn.Dense(self.out_dim, dtype=self.dtype, name="out")(pooled).astype(jnp.float32)
        if self.return_states:
            return out, h.astype(jnp.float32), valid
        return out
