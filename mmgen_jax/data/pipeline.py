"""Grain input pipeline over TFDS ArrayRecord files, without TensorFlow.

The training stream is defined globally, independently of how many processes
read it, so that a run gives the same results on 1 host or 64 and can resume on a
different number of hosts:

  * one global stream: the split shuffled with `seed`, repeated forever, with a
    new shuffle each epoch; the element at global position n has `index` n;
  * global batch s holds positions [s*G, (s+1)*G), G = global_batch_size;
  * process k of P reads the positions n of batch s with n % P == k, in
    increasing order (a local batch of G // P examples).

Batching happens on the random-access `MapDataset`, before `to_iter_dataset`, so
Grain's iterator state counts batches, the same number on every process and for
every process count; `TrainStream.get_state` wraps it with the settings that
must match on resume.

Examples are read with `builder.as_data_source` and decoded by TFDS's numpy path
(PIL for images), which never imports TensorFlow.
"""

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mmgen_jax.data import prepare, tokenizer
from mmgen_jax.data.digits_domain import DIGIT_WORDS

# Integer features copied to the batch (as int32) when a dataset has them.
_OPTIONAL_INT_KEYS = ("label", "fg", "bg")
# Keys of `TrainStream.get_state()` that must match when restoring.
_STATE_IDENTITY = ("dataset", "split", "global_batch_size", "seed")


def builder_kwargs(data_config) -> dict | None:
    """What preparing `data_config.name` needs beyond its name: a folder dataset's path and
    settings (`data.path`, `data.image_size`, `data.skip_bad`); None for other datasets."""
    if data_config.name.split("/")[0] not in prepare.FOLDER_DATASETS:
        return None
    if not data_config.get("path"):
        raise ValueError(
            f"data.name={data_config.name!r} trains on your own folder of images and "
            f"captions: pass it with --config.data.path=/your/folder"
        )
    return {
        "path": data_config.path,
        "image_size": data_config.image_size,
        "skip_bad": bool(data_config.get("skip_bad", False)),
    }


def _builder(name: str, data_dir: str | None, builder_kwargs: dict | None = None):
    """Prepares `name` if needed; returns a read-only builder over its files."""
    data_dir = data_dir or prepare.default_data_dir()
    # A read-only builder from the files: no dataset code (and so nothing of a
    # public dataset's module) is imported, and nothing is downloaded.
    return tfds.builder_from_directory(prepare.ensure_prepared(name, data_dir, builder_kwargs))


def split_names(name: str, data_dir: str | None, builder_kwargs: dict | None = None) -> set[str]:
    """The splits of `name` as prepared (prepares it if needed)."""
    return set(_builder(name, data_dir, builder_kwargs).info.splits)


def _label_names(builder) -> list[str] | None:
    """Class names of a `label` ClassLabel feature, made into captions when uncaptioned."""
    features = builder.info.features
    if "label" in features and isinstance(features["label"], tfds.features.ClassLabel):
        return list(features["label"].names)
    return None


def load_source(name: str, split: str, data_dir: str | None, builder_kwargs: dict | None = None):
    """Prepares `name` if needed; returns the split as a random-access source.

    The source has `len()` and `source[i]` -> dict of numpy values / bytes.
    `builder_kwargs`: a folder dataset's settings (see `builder_kwargs()`).
    """
    return _builder(name, data_dir, builder_kwargs).as_data_source(split)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> (H, W, 3): grey is repeated, alpha dropped."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] < 3:  # grey, or grey + alpha
        return np.repeat(image[..., :1], 3, axis=-1)
    return image[..., :3]


def _square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crops to a square (no distortion), then resizes to (size, size)."""
    h, w = image.shape[:2]
    if h != w:
        top, left = (h - min(h, w)) // 2, (w - min(h, w)) // 2
        image = image[top : top + min(h, w), left : left + min(h, w)]
    if image.shape[0] != size:
        # PIL's resize filters over the whole footprint, so downscaling does not
        # alias.
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return image


# Texts for datasets whose only text is a class label (cifar10, mnist): one template per
# example, picked from its stream index, so the captions vary but a resumed run sees the same.
_CLASS_TEMPLATES = ("a photo of {a} {name}", "a small {name}", "an image of {a} {name}")
_DIGIT_TEMPLATES = (
    "a handwritten {word}, the digit {name}",
    "the digit {name}",
    "a handwritten {name}",
)


def _pick(index: int, n: int) -> int:
    """A choice in [0, n) that depends only on `index`, hashed so that neighbours differ."""
    return int(np.random.SeedSequence(int(index)).generate_state(1)[0] % n)


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def class_caption(name: str, index: int = 0) -> str:
    """A caption for class `name` (digit classes read as digits), chosen by `index`."""
    name = name.replace("_", " ")
    if name in tuple("0123456789"):
        template = _DIGIT_TEMPLATES[_pick(index, len(_DIGIT_TEMPLATES))]
        return template.format(name=name, word=DIGIT_WORDS[int(name)])
    template = _CLASS_TEMPLATES[_pick(index, len(_CLASS_TEMPLATES))]
    return template.format(name=name, a="an" if name[:1] in tuple("aeiou") else "a")


def caption_of(example: dict, label_names: Sequence[str] | None = None, index: int = 0) -> str:
    """The example's caption.

    A `caption` feature is used as is; a `captions/text` sequence (e.g. coco_captions, several
    per image) gives one caption picked by `index`, the example's stream position, so it
    varies across epochs yet is reproducible; a class `label` gives a templated caption
    (`class_caption`); otherwise ''.
    """
    if "caption" in example:
        return _as_str(example["caption"])
    captions = example.get("captions")
    if isinstance(captions, dict) and "text" in captions:
        texts = captions["text"]
        return _as_str(texts[_pick(index, len(texts))]) if len(texts) else ""
    if label_names is not None and "label" in example:
        return class_caption(label_names[int(example["label"])], index)
    return ""


def preprocess(
    example: dict,
    image_size: int,
    max_text_len: int,
    label_names: Sequence[str] | None = None,
    index: int = 0,
    tokenizer_name: str = "bytes",
) -> dict:
    """One source example -> dict of numpy values (no batch dimension).

    `text` encodes `caption_of(example, label_names, index)` with the tokenizer
    `tokenizer_name` (`tokenizer.by_name`): `index` (the example's stream position) picks
    among several captions or caption templates.
    """
    image = _square(_to_rgb(np.asarray(example["image"])), image_size)
    out = {"image": image.astype(np.float32) / 127.5 - 1.0}
    text = caption_of(example, label_names, index)
    out["text"] = tokenizer.by_name(tokenizer_name).encode(text, max_text_len)
    for key in _OPTIONAL_INT_KEYS:
        if key in example:
            out[key] = np.int32(example[key])
    if "held_out" in example:
        out["held_out"] = np.bool_(example["held_out"])
    return out


def _shuffle_seed(seed: int) -> int:
    """Mixes the user seed into Grain's 32-bit shuffle seed.

    Grain shuffles epoch e with seed + e, so seeds 0 and 1 would share all but one
    epoch; hashing the seed first makes different seeds give unrelated streams.
    """
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _attach_index(index: int, example: Any) -> tuple[int, Any]:
    return index, example


def global_stream(source, seed: int) -> grain.MapDataset:
    """The infinite global stream of (position, example), before sharding.

    Shuffle before repeat: each epoch is a permutation of the source (Grain
    derives an epoch's shuffle from the position, so every epoch is shuffled
    anew) and epochs never mix.
    """
    ds = grain.MapDataset.source(source).shuffle(seed=_shuffle_seed(seed))
    return ds.repeat(None).map_with_index(_attach_index)


class TrainStream:
    """Infinite iterator over this process's share of the global training batches.

    Each batch is a dict of host-local numpy arrays: `image` float32 (b, H, W, 3)
    in [-1, 1], `text` int32 (b, max_text_len), `index` int64 (b,) global stream
    positions, and `label`, `fg`, `bg` int32 / `held_out` bool when the dataset
    has them; b = global_batch_size // process_count.

    `num_threads` batches are read in parallel by Grain threads and up to
    max(prefetch, num_threads) batches are buffered ahead. `get_state()` counts
    only the batches returned, never the prefetched ones. Decoding TFDS records is
    Python (GIL-bound), so the default is one thread: on digits_captions one reads ~4.8k
    examples/s, two ~3.5k; more pay only for datasets whose reads wait on storage.
    """

    def __init__(
        self,
        *,
        name: str,
        data_dir: str | None,
        split: str,
        image_size: int,
        max_text_len: int,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        num_threads: int = 1,
        prefetch: int = 2,
        builder_kwargs: dict | None = None,
        tokenizer_name: str = "bytes",
    ):
        if global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by the "
                f"process count {process_count}; choose a multiple of it."
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
        self._identity = {
            "dataset": name,
            "split": split,
            "global_batch_size": global_batch_size,
            "seed": seed,
        }
        builder = _builder(name, data_dir, builder_kwargs)
        label_names = _label_names(builder)

        def to_batch_element(indexed: tuple[int, dict]) -> dict:
            index, example = indexed
            out = preprocess(example, image_size, max_text_len, label_names, index, tokenizer_name)
            out["index"] = np.int64(index)
            return out

        ds = global_stream(builder.as_data_source(split), seed)
        # Strided, so that each global batch is [s*G, (s+1)*G) for any P.
        ds = ds[process_index::process_count]
        ds = ds.map(to_batch_element)
        ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
        # Grain runs at most `prefetch_buffer_size` reads at once (and warns when
        # it is below num_threads), so the buffer holds at least num_threads batches.
        self._iterator = ds.to_iter_dataset(
            grain.ReadOptions(
                num_threads=num_threads, prefetch_buffer_size=max(prefetch, num_threads)
            )
        ).__iter__()
        self._batches = 0

    def __iter__(self) -> "TrainStream":
        return self

    def __next__(self) -> dict:
        batch = next(self._iterator)
        self._batches += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position after the batches already returned."""
        return {**self._identity, "batches": self._batches, "grain": self._iterator.get_state()}

    def set_state(self, state: dict) -> None:
        """Continues after the batches counted in `state` (any process count)."""
        for key in _STATE_IDENTITY:
            if state.get(key) != self._identity[key]:
                raise ValueError(
                    f"Cannot resume the input stream: it was saved with {key}="
                    f"{state.get(key)!r} but this run uses {key}="
                    f"{self._identity[key]!r}. Resume with the same {key} or start a "
                    f"new workdir."
                )
        self._iterator.set_state(state["grain"])
        self._batches = int(state["batches"])

    def close(self) -> None:
        """Stops the prefetch threads (also done when the stream is collected)."""
        self._iterator.close()


def eval_batch(
    *,
    name: str,
    data_dir: str | None,
    split: str,
    image_size: int,
    max_text_len: int,
    num: int,
    offset: int = 0,
    builder_kwargs: dict | None = None,
    at_most: bool = False,
    tokenizer_name: str = "bytes",
) -> dict:
    """Examples [offset, offset + num) of `split` in stored order, as one batch.

    Besides the training keys (`index` = position in the split), `caption` holds
    the full (uncut) texts as a list of str. With `at_most`, a split with fewer
    examples gives all it has instead of an error.
    """
    builder = _builder(name, data_dir, builder_kwargs)
    source = builder.as_data_source(split)
    if at_most:
        num = min(num, len(source) - offset)
    if offset < 0 or num < 1 or offset + num > len(source):
        raise ValueError(
            f"Asked for examples [{offset}, {offset + num}) of "
            f"{name}/{split}, which has {len(source)}."
        )
    label_names = _label_names(builder)
    indices = range(offset, offset + num)
    examples = [source[i] for i in indices]
    rows = [
        preprocess(ex, image_size, max_text_len, label_names, i, tokenizer_name)
        for ex, i in zip(examples, indices, strict=True)
    ]
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    batch["index"] = np.arange(offset, offset + num, dtype=np.int64)
    batch["caption"] = [
        caption_of(ex, label_names, i) for ex, i in zip(examples, indices, strict=True)
    ]
    return batch
