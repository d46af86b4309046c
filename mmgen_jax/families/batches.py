"""Host batch -> the fields a captioned family's step reads, shared by the GAN and the VAE."""


def captioned_batch(batch, config):
    """image, text, index (uint32: no int64 on device), and the label when the config's
    auxiliary label heads are on (`train.aux_classifier_weight`)."""
    out = {
        "image": batch["image"],
        "text": batch["text"],
        "index": (batch["index"] % 2**32).astype("uint32"),
    }
    if config.train.aux_classifier_weight:
        if "label" not in batch:
            raise ValueError(
                f"train.aux_classifier_weight > 0 needs a dataset with a 'label' feature "
                f"and {config.data.name!r} has none: set "
                f"--config.train.aux_classifier_weight=0"
            )
        out["label"] = batch["label"].astype("int32")
    return out
