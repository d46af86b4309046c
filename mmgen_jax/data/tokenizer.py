"""Byte-level tokenizer: UTF-8 bytes plus three special ids.

No vocabulary file, no unknown tokens, any language: every string is a byte
sequence, and every byte has an id. The cost is longer sequences for non-Latin
scripts (a Chinese character is 3 bytes), which is fine for short captions.

    PAD = 0    padding after EOS (models mask it out: `ids != PAD`)
    BOS = 1    reserved for decoders that need a start token; never emitted
    EOS = 2    end of caption, always present, even when a caption is cut
    byte b  -> b + 3
"""

from collections.abc import Iterable, Sequence

import numpy as np

PAD = 0
BOS = 1
EOS = 2
BYTE_OFFSET = 3  # id of byte 0: ids below it are the specials
VOCAB_SIZE = 256 + BYTE_OFFSET  # 259


def _cut_at_char_boundary(data: bytes, limit: int) -> bytes:
    """Returns the longest prefix of UTF-8 `data` of at most `limit` bytes.

    UTF-8 continuation bytes look like 0b10xxxxxx; a cut just before one of them
    would split a character, so we step back to the character's lead byte.
    """
    if len(data) <= limit:
        return data
    end = limit
    while end > 0 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end]


def encode(text: str, max_len: int) -> np.ndarray:
    """Encodes `text` into int32 ids of shape (max_len,): bytes, EOS, PAD...

    Text longer than `max_len - 1` bytes is cut at a character boundary so that
    EOS always fits; this is never an error.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1 to hold EOS, got {max_len}.")
    data = _cut_at_char_boundary(text.encode("utf-8"), max_len - 1)
    ids = np.zeros((max_len,), np.int32)  # zeros == PAD
    ids[: len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + BYTE_OFFSET
    ids[len(data)] = EOS
    return ids


def encode_batch(texts: Iterable[str], max_len: int) -> np.ndarray:
    """Encodes several texts into an int32 array of shape (N, max_len)."""
    rows = [encode(t, max_len) for t in texts]
    if not rows:
        return np.zeros((0, max_len), np.int32)
    return np.stack(rows)


def decode(ids: Sequence[int] | np.ndarray) -> str:
    """Decodes ids up to the first EOS or PAD; BOS is skipped.

    Invalid UTF-8 (e.g. bytes sampled by a model) becomes U+FFFD rather than an
    error, so generated token ids can always be shown.
    """
    data = bytearray()
    for i in np.asarray(ids).reshape(-1).tolist():
        if i in (EOS, PAD):
            break
        if BYTE_OFFSET <= i < VOCAB_SIZE:  # skips BOS (and any out-of-range id)
            data.append(i - BYTE_OFFSET)
    return data.decode("utf-8", errors="replace")


def by_name(name: str):
    """The tokenizer module `data.tokenizer` names: 'bytes' (this module: any language) or
    'minilm' (WordPiece ids for `model.text_encoder="minilm"`: English). Both offer
    `encode`, `encode_batch` and `decode`, 0 = padding."""
    if name == "bytes":
        import sys

        return sys.modules[__name__]
    if name == "minilm":
        from mmgen_jax.data import wordpiece

        return wordpiece
    raise ValueError(f"data.tokenizer={name!r}: use 'bytes' (any language) or 'minilm' (English)")
