"""Each GAN loss against values computed by hand."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mmgen_jax import losses


def softplus(x):
    return math.log1p(math.exp(x))


REAL = jnp.array([2.0, -1.0])
FAKE = jnp.array([0.5, -3.0])
WRONG = jnp.array([1.0, 0.0])


def test_nonsaturating_discriminator():
    # -log sigmoid(r) = softplus(-r); -log(1 - sigmoid(f)) = softplus(f)
    want = (softplus(-2.0) + softplus(1.0)) / 2 + (softplus(0.5) + softplus(-3.0)) / 2
    got = losses.discriminator_loss("nonsaturating", REAL, FAKE)
    np.testing.assert_allclose(got, want, rtol=1e-6)

    # The textbook form on probabilities agrees.
    def sig(x):
        return 1 / (1 + math.exp(-x))

    textbook = (
        -(math.log(sig(2.0)) + math.log(sig(-1.0))) / 2
        - (math.log(1 - sig(0.5)) + math.log(1 - sig(-3.0))) / 2
    )
    np.testing.assert_allclose(got, textbook, rtol=1e-6)


def test_nonsaturating_generator():
    want = (softplus(-0.5) + softplus(3.0)) / 2
    np.testing.assert_allclose(losses.generator_loss("nonsaturating", FAKE), want, rtol=1e-6)


def test_hinge():
    # D: mean(max(0, 1 - r)) + mean(max(0, 1 + f)) = (0 + 2)/2 + (1.5 + 0)/2
    np.testing.assert_allclose(losses.discriminator_loss("hinge", REAL, FAKE), 1.75, rtol=1e-6)
    # G: -mean(f) = -(0.5 - 3)/2
    np.testing.assert_allclose(losses.generator_loss("hinge", FAKE), 1.25, rtol=1e-6)


def test_matching_aware_shares_the_negative_side():
    w = 0.5
    want = (
        (softplus(-2.0) + softplus(1.0)) / 2
        + (1 - w) * (softplus(0.5) + softplus(-3.0)) / 2
        + w * (softplus(1.0) + softplus(0.0)) / 2
    )
    got = losses.discriminator_loss("nonsaturating", REAL, FAKE, WRONG, mismatch_weight=w)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # hinge: 1 + (1 - w) * 0.75 + w * mean(max(0, 1 + [1, 0])) = 1 + 0.375 + 0.75
    got = losses.discriminator_loss("hinge", REAL, FAKE, WRONG, mismatch_weight=w)
    np.testing.assert_allclose(got, 2.125, rtol=1e-6)


def test_stable_for_extreme_logits():
    big = jnp.array([1e4, -1e4])
    assert np.isfinite(losses.discriminator_loss("nonsaturating", big, -big))
    np.testing.assert_allclose(
        losses.generator_loss("nonsaturating", jnp.array([1e4])), 0.0, atol=1e-6
    )


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown GAN loss"):
        losses.generator_loss("wasserstein", FAKE)


def test_classification_loss():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    z0 = math.exp(2.0) + 1 + math.exp(-1.0)
    want = (-(2.0 - math.log(z0)) + math.log(3.0)) / 2
    np.testing.assert_allclose(losses.classification_loss(logits, labels), want, rtol=1e-6)
    # Weighted: only the second row counts.
    weighted = losses.classification_loss(logits, labels, jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(weighted, math.log(3.0), rtol=1e-6)


def test_contrastive_loss_picks_the_own_row():
    # Two local queries at offset 1 of three keys; cosine similarity / T.
    q = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    k = jnp.array([[0.0, 1.0], [3.0, 0.0], [0.0, -1.0]])
    t = 0.5
    sims = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, -1.0]]) / t
    target = [1, 2]
    want = -np.mean([s[i] - np.log(np.exp(s).sum()) for s, i in zip(sims, target)])
    np.testing.assert_allclose(losses.contrastive_loss(q, k, 1, t), want, rtol=1e-5)


def test_mode_seeking_after_pooling_ignores_pixel_noise():
    z, z2 = jnp.zeros((2, 4)), jnp.ones((2, 4))
    base = jnp.zeros((2, 4, 4, 3))
    checker = jnp.tile(jnp.array([[1.0, -1.0], [-1.0, 1.0]]), (2, 2))[None, :, :, None]
    noisy = base + jnp.broadcast_to(checker, base.shape)
    # At full resolution a checkerboard counts as variety; pooled 2x2 it is none.
    assert losses.mode_seeking_loss(noisy, base, z, z2, 1.0)[1] == pytest.approx(1.0)
    assert losses.mode_seeking_loss(noisy, base, z, z2, 1.0, pool=2)[1] == pytest.approx(0.0)
    shifted = base.at[:, :2, :2].set(0.8)  # a shape change survives pooling
    loss, ratio = losses.mode_seeking_loss(shifted, base, z, z2, 2.0, pool=2)
    assert ratio == pytest.approx(0.8 / 4)
    assert loss == pytest.approx(2.0 / (0.8 / 4 + 1e-5))
