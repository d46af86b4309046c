"""Pure GAN loss functions on discriminator logits (no project imports).

Each returns a scalar mean over the (per-device) batch. Working on logits with
softplus keeps the log-sigmoid terms finite for any logit:
  -log sigmoid(x) = softplus(-x),   -log(1 - sigmoid(x)) = softplus(x).
"""

import jax
import jax.numpy as jnp

LOSSES = ("hinge", "nonsaturating")  # train.loss
# train.update_order: G's step sees D already updated this step, or both see the step's start.
UPDATE_ORDERS = ("alternating", "simultaneous")


def _real_term(loss, logits):
    """The D-loss term that pushes `logits` towards 'real'."""
    if loss == "nonsaturating":
        return jnp.mean(jax.nn.softplus(-logits))  # -E[log D(x)]
    if loss == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - logits))  # E[max(0, 1 - D(x))]
    raise ValueError(f"unknown GAN loss {loss!r}; use one of {LOSSES}")


def _fake_term(loss, logits):
    """The D-loss term that pushes `logits` towards 'fake'."""
    if loss == "nonsaturating":
        return jnp.mean(jax.nn.softplus(logits))  # -E[log(1 - D(G(z)))]
    if loss == "hinge":
        return jnp.mean(jax.nn.relu(1.0 + logits))  # E[max(0, 1 + D(G(z)))]
    raise ValueError(f"unknown GAN loss {loss!r}; use one of {LOSSES}")


def discriminator_loss(loss, real_logits, fake_logits, mismatched_logits=None, mismatch_weight=0.5):
    """L_D = real(x) + fake(G(z)); with mismatched captions (GAN-INT-CLS), the
    negative side is shared: real(x) + (1 - w) fake(G(z)) + w fake(x, wrong caption)."""
    negative = _fake_term(loss, fake_logits)
    if mismatched_logits is not None:
        negative = (1.0 - mismatch_weight) * negative + mismatch_weight * _fake_term(
            loss, mismatched_logits
        )
    return _real_term(loss, real_logits) + negative


def generator_loss(loss, fake_logits):
    """Non-saturating L_G = -E[log D(G(z))]; hinge L_G = -E[D(G(z))]."""
    if loss == "nonsaturating":
        return _real_term(loss, fake_logits)
    if loss == "hinge":
        return -jnp.mean(fake_logits)
    raise ValueError(f"unknown GAN loss {loss!r}; use one of {LOSSES}")


def contrastive_loss(queries, keys, offset, temperature):
    """InfoNCE: local query i should pick key `offset + i` among all `keys` (cosine / T).

    queries: (b, C) this device's rows; keys: (B, C) the whole global batch, in which this
    device's rows start at `offset`. Mean over the local rows.
    """
    q = queries / (jnp.linalg.norm(queries, axis=-1, keepdims=True) + 1e-6)
    k = keys / (jnp.linalg.norm(keys, axis=-1, keepdims=True) + 1e-6)
    logits = q @ k.T / temperature
    targets = offset + jnp.arange(queries.shape[0])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, targets[:, None], axis=-1))


def cross_entropy(logits, labels):
    """Per-example cross-entropy (B,) of integer `labels` under `logits` (B, K)."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def classification_loss(logits, labels, weights=None):
    """Mean cross-entropy of integer `labels` under `logits` (B, K); with `weights` (B,),
    the weighted mean (0 when every weight is 0)."""
    nll = cross_entropy(logits, labels)
    if weights is None:
        return jnp.mean(nll)
    return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1e-6)


def mode_seeking_loss(fake, twin, z, z2, weight, pool=1):
    """Mode seeking (Mao et al., 2019): the images of one caption under two noises should be
    as far apart as the noises are. -> (weight / (that ratio + eps), the ratio).

    With `pool` > 1 the images are compared after `pool` x `pool` average pooling, so the
    term asks for different shapes rather than different pixel noise (which it rewards as
    much at full resolution)."""
    if pool > 1:
        fake, twin = (_average_pool(x, pool) for x in (fake, twin))
    ratio = jnp.mean(jnp.abs(fake - twin)) / jnp.mean(jnp.abs(z - z2))
    return weight / (ratio + 1e-5), ratio


def _average_pool(images, size):
    b, h, w, c = images.shape
    return images.reshape(b, h // size, size, w // size, size, c).mean(axis=(2, 4))
