"""Valid UTF-8 by construction: the automaton against Python's strict decoder, and the VAE's
caption decoding loop (`families.vae.decode_captions`) driven by adversarial logits."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmgen_jax import utf8
from mmgen_jax.data import tokenizer
from mmgen_jax.families.vae import decode_captions

V, OFF = tokenizer.VOCAB_SIZE, tokenizer.BYTE_OFFSET
NEXT = np.asarray(utf8.NEXT_STATE)[:, OFF:]  # over bytes


def _run_bytes(sequences):
    """Automaton over byte rows (N, n): (never refused, ends between characters)."""
    state = np.zeros(len(sequences), np.int64)
    ok = np.ones(len(sequences), bool)
    for column in sequences.T:
        state = NEXT[np.maximum(state, 0), column]
        ok &= state >= 0
    return ok, ok & (state == 0)


def _python_valid(rows):
    out = []
    for row in rows:
        try:
            bytes(row.tolist()).decode("utf-8")
            out.append(True)
        except UnicodeDecodeError:
            out.append(False)
    return np.array(out)


def test_automaton_accepts_exactly_strict_utf8():
    # Every sequence of 1 or 2 bytes, every 3-byte one after a 3/4-byte lead, and random
    # 4-byte ones after a 4-byte lead (the second byte over its full range).
    rng = np.random.default_rng(0)
    samples = [
        np.arange(256)[:, None],
        np.array(list(itertools.product(range(256), repeat=2))),
        np.array([(a, b, c) for a in range(0xE0, 0xF5) for b in range(256) for c in range(256)]),
        np.concatenate(
            [
                rng.integers(0xF0, 0xF5, (200_000, 1)),
                rng.integers(0x80, 0xC0, (200_000, 3)) ^ rng.choice([0, 0x40], (200_000, 3)),
            ],
            axis=1,
        ),
    ]
    for rows in samples:
        _, complete = _run_bytes(rows)
        np.testing.assert_array_equal(complete, _python_valid(rows))


def test_every_valid_string_is_allowed_step_by_step():
    # Edge code points of each length, either side of the surrogates and the last one.
    text = "a\x00\x7f\u0080\u07ff\u0800\u0fff\ud7ff\ue000\uffff\U00010000\U0003ffff\U0010ffff"
    text += "数字 sieben ٧ семь"
    ids = tokenizer.encode(text, 200)
    state = jnp.array([utf8.START])
    for position, token in enumerate(ids[: list(ids).index(tokenizer.EOS) + 1]):
        assert bool(utf8.allowed(state, 200 - 2 - position)[0, token]), (position, token)
        state = utf8.advance(state, jnp.array([token]))


def _decode_table(logits, temperature, seed=0):
    """decode_captions with position t's logits taken from logits[:, t] (B, L, V)."""
    batch, length, _ = logits.shape
    table = jnp.asarray(logits, jnp.float32)

    def next_logits(position, previous):
        del previous
        return position + 1, table[:, position]

    keys = jax.random.split(jax.random.PRNGKey(seed), batch)
    return np.asarray(decode_captions(next_logits, jnp.int32(0), keys, length, temperature))


def _assert_valid_captions(tokens, length):
    assert tokens.shape[1] == length and tokens.dtype == np.int32
    for row in tokens:
        row = list(row)
        eos = row.index(tokenizer.EOS)  # present: at position length - 1 at the latest
        assert all(t == tokenizer.PAD for t in row[eos + 1 :])
        assert all(OFF <= t < V for t in row[:eos]), row
        bytes(t - OFF for t in row[:eos]).decode("utf-8")  # strict: raises on invalid


def _prefer(bytes_by_position, length, batch=1, base=None):
    """Logits (batch, length, V) that put +50 on the given bytes at each position (cycled)."""
    logits = np.zeros((batch, length, V)) if base is None else base.copy()
    for t in range(length):
        for b in bytes_by_position[t % len(bytes_by_position)]:
            logits[:, t, OFF + b] += 50.0
    return logits


INVALID = list(range(0x80, 0xC2)) + list(range(0xF5, 0x100))  # stray, C0/C1, F5-FF
ADVERSARIES = {
    # Bytes never valid as a lead, plus PAD and BOS, at the top everywhere.
    "invalid_bytes": lambda length: (
        _prefer([INVALID], length) + 100.0 * np.isin(np.arange(V), [tokenizer.PAD, tokenizer.BOS])
    ),
    "continuation_first": lambda length: _prefer([range(0x80, 0xC0)], length),
    # Overlong: C0/C1 leads, E0 then 80-9F, F0 then 80-8F.
    "overlong": lambda length: _prefer([[0xC0, 0xE0, 0xF0], range(0x80, 0xA0)], length),
    "surrogates": lambda length: _prefer([[0xED], range(0xA0, 0xC0)], length),
    "above_10ffff": lambda length: _prefer([[0xF4], range(0x90, 0xC0)], length),
    # Four-byte (and three-byte) leads everywhere: the cut-off must not split a character.
    "long_leads": lambda length: (
        _prefer([range(0xF0, 0xF5)], length)
        + 20.0 * np.isin(np.arange(V), OFF + np.arange(0xE0, 0xF0))
    ),
    # EOS right after a lead byte.
    "eos_inside": lambda length: (
        _prefer([[0xE4], []], length)
        + 60.0 * (np.arange(V) == tokenizer.EOS) * (np.arange(length)[:, None] % 2 == 1)
    ),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIES))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_adversarial_logits_decode_to_strict_utf8(name, temperature):
    rng = np.random.default_rng(1)
    for length in (1, 2, 3, 5, 48):
        logits = ADVERSARIES[name](length)
        logits = np.broadcast_to(logits, (16, length, V)) + rng.normal(0, 3, (16, length, V))
        tokens = _decode_table(logits, temperature)
        _assert_valid_captions(tokens, length)
        if length >= 5 and name in ("continuation_first", "long_leads"):
            assert (tokens[:, 0] >= OFF).all()  # the constraint redirects; it does not end


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1e-9, 1e4])
def test_random_and_extreme_logits_decode_to_strict_utf8(temperature):
    rng = np.random.default_rng(2)
    length = 24
    logits = rng.normal(0, 10, (256, length, V))
    # Some rows all -inf, +inf or NaN on the valid tokens: a choice still exists.
    logits[0] = -np.inf
    logits[1] = np.inf
    logits[2] = np.nan
    tokens = _decode_table(logits, temperature)
    _assert_valid_captions(tokens, length)
    if temperature >= 1.0:  # sampled at random: multi-byte characters do occur
        assert (tokens >= OFF + 0xC2).any()


def test_uniform_sampling_covers_multibyte_characters():
    # Near-uniform over the valid continuations: lots of 2-, 3- and 4-byte characters,
    # every one of them complete.
    length = 40
    tokens = _decode_table(np.zeros((64, length, V)), 1.0, seed=3)
    _assert_valid_captions(tokens, length)
    texts = [bytes(t - OFF for t in row if t >= OFF).decode("utf-8") for row in tokens]
    widths = {len(ch.encode("utf-8")) for text in texts for ch in text}
    assert widths == {1, 2, 3, 4}
