"""What a family needs around a pretrained caption encoder (`model.text_encoder="minilm"`):
a config check, and an optimizer that leaves the frozen encoder untouched.

The shipped weights themselves go into a fresh state with `models.minilm.load_into(params)`.
"""

import jax
import optax

from mmgen_jax.models import minilm

PRETRAINED = ("minilm",)


def check(config) -> None:
    """The pretrained encoder reads its own WordPiece ids, and only it reads them."""
    encoder = config.model.text_encoder
    tokenizer = config.data.get("tokenizer", "bytes")
    if (encoder == "minilm") != (tokenizer == "minilm"):
        raise ValueError(
            f"model.text_encoder={encoder!r} with data.tokenizer={tokenizer!r}: the MiniLM "
            "encoder and the 'minilm' tokenizer go together; set both "
            "--config.model.text_encoder=minilm --config.data.tokenizer=minilm, or neither"
        )


def _labels(params):
    """'frozen' for every leaf under a MiniLM module, 'train' elsewhere."""

    def label(path, _):
        names = {getattr(k, "key", None) for k in path}
        return "frozen" if minilm.MODULE_NAME in names else "train"

    return jax.tree_util.tree_map_with_path(label, params)


def optimizer(tx: optax.GradientTransformation, model_config) -> optax.GradientTransformation:
    """`tx`, except that a frozen pretrained encoder (`model.text_encoder_trainable=False`)
    gets no update and no optimizer state (its gradient is already stopped in the model)."""
    frozen = model_config.text_encoder in PRETRAINED and not model_config.get(
        "text_encoder_trainable", False
    )
    if not frozen:
        return tx
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, _labels)
