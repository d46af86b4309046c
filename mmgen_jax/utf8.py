"""Valid UTF-8 by construction for byte-level decoders: a small automaton over the byte
tokens of `data.tokenizer`, as pure jnp functions a decoding loop carries in its scan.

State s (int32) says what the next byte must be (RFC 3629, table 3-7 of Unicode):
  0 a lead byte (or the end of the caption)   00-7F, C2-DF, E0-EF, F0-F4
  1 the last continuation byte                80-BF
  2 two continuation bytes left               80-BF
  3 after E0 (no overlong 3-byte forms)        A0-BF, then one 80-BF
  4 after ED (no surrogates D800-DFFF)         80-9F, then one 80-BF
  5 three continuation bytes left             80-BF
  6 after F0 (no overlong 4-byte forms)        90-BF, then two 80-BF
  7 after F4 (nothing above U+10FFFF)          80-8F, then two 80-BF
C0, C1 and F5-FF are never valid. EOS is valid only in state 0; PAD and BOS never.
"""

import jax.numpy as jnp
import numpy as np

from mmgen_jax.data import tokenizer

START = 0  # the state before a caption's first byte


def _transitions():
    """(states, 256) next state after each byte, -1 where the byte is invalid."""
    table = np.full((8, 256), -1, np.int32)
    table[0, 0x00:0x80] = 0
    table[0, 0xC2:0xE0] = 1
    table[0, 0xE0] = 3
    table[0, 0xE1:0xF0] = 2
    table[0, 0xED] = 4
    table[0, 0xF0] = 6
    table[0, 0xF1:0xF4] = 5
    table[0, 0xF4] = 7
    table[1, 0x80:0xC0] = 0
    table[2, 0x80:0xC0] = 1
    table[3, 0xA0:0xC0] = 1
    table[4, 0x80:0xA0] = 1
    table[5, 0x80:0xC0] = 2
    table[6, 0x90:0xC0] = 2
    table[7, 0x80:0x90] = 2
    return table


_NEXT = _transitions()
# Continuation bytes still owed in each state: a byte may start a character only if the
# rest of it fits before the end.
_OWED = np.array([0, 1, 2, 2, 2, 3, 3, 3], np.int32)


def _token_tables():
    """The automaton over token ids: (states, VOCAB_SIZE) next state (-1 = invalid) and
    continuation bytes owed after each token."""
    next_state = np.full((len(_OWED), tokenizer.VOCAB_SIZE), -1, np.int32)
    next_state[:, tokenizer.BYTE_OFFSET :] = _NEXT
    next_state[START, tokenizer.EOS] = START
    owed = np.where(next_state >= 0, _OWED[np.maximum(next_state, 0)], 0)
    # numpy: a jnp array here would start the JAX backend at import, before the command
    # has chosen its devices; the functions below take them in as constants when traced.
    return next_state, owed


NEXT_STATE, OWED_AFTER = _token_tables()


def allowed(state, bytes_left):
    """(B, VOCAB_SIZE) bool: the tokens that keep each caption valid UTF-8.

    state: (B,) automaton states; bytes_left: byte positions that remain after this one
    before the end is forced (scalar or (B,)); below 0 only EOS (in state 0) is allowed.
    """
    next_state = jnp.asarray(NEXT_STATE)[state]
    fits = jnp.asarray(OWED_AFTER)[state] <= jnp.reshape(bytes_left, (-1, 1))
    is_eos = jnp.arange(tokenizer.VOCAB_SIZE) == tokenizer.EOS
    return (next_state >= 0) & (fits | is_eos)


def constrain(logits, state, bytes_left):
    """`logits` (B, VOCAB_SIZE) with every token that `allowed` refuses at -inf; the allowed
    ones are made finite first, so that a choice among them always exists (argmax or a
    categorical draw) whatever the logits hold."""
    big = jnp.finfo(jnp.float32).max / 4
    finite = jnp.clip(jnp.nan_to_num(logits.astype(jnp.float32), nan=-big), -big, big)
    return jnp.where(allowed(state, bytes_left), finite, -jnp.inf)


def advance(state, token):
    """The state after `token` (B,); tokens that are not valid leave the state unchanged
    (PAD after the end)."""
    next_state = jnp.asarray(NEXT_STATE)[state, token]
    return jnp.where(next_state >= 0, next_state, state)
