"""The Gaussian mixture fitted by EM to latent codes (ex-post density estimation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmgen_jax import elbo, latent_mixture


def _two_clusters(n=3000):
    rng = np.random.default_rng(0)
    labels = rng.random(n) < 0.3
    means = np.where(labels[:, None], [[-4.0, 2.0, 0.0]], [[3.0, -1.0, 1.0]])
    scales = np.where(labels[:, None], [[0.5, 1.0, 0.2]], [[1.5, 0.3, 0.7]])
    return (means + scales * rng.normal(size=(n, 3))).astype(np.float32)


def test_em_recovers_two_known_clusters_and_is_deterministic():
    points = _two_clusters()
    fit = jax.jit(latent_mixture.fit, static_argnums=1)
    mixture = fit(points, 2, jax.random.PRNGKey(0))
    order = np.argsort(np.asarray(mixture["means"])[:, 0])  # the left cluster first
    np.testing.assert_allclose(np.exp(mixture["log_weights"])[order], [0.3, 0.7], atol=0.03)
    np.testing.assert_allclose(
        mixture["means"][order], [[-4.0, 2.0, 0.0], [3.0, -1.0, 1.0]], atol=0.1
    )
    np.testing.assert_allclose(
        np.exp(0.5 * mixture["logvars"])[order], [[0.5, 1.0, 0.2], [1.5, 0.3, 0.7]], rtol=0.1
    )
    again = fit(points, 2, jax.random.PRNGKey(0))
    for name in mixture:
        np.testing.assert_array_equal(mixture[name], again[name])


def test_log_prob_is_the_mixture_density_and_em_raises_it():
    points = _two_clusters(500)
    start = latent_mixture.fit(points, 3, jax.random.PRNGKey(1), iterations=0)
    fitted = latent_mixture.fit(points, 3, jax.random.PRNGKey(1), iterations=30)
    assert float(jnp.mean(latent_mixture.log_prob(points, fitted))) > float(
        jnp.mean(latent_mixture.log_prob(points, start))
    )
    z = jnp.asarray(points[:5])
    by_hand = jnp.log(
        sum(
            jnp.exp(fitted["log_weights"][c])
            * jnp.exp(elbo.gaussian_log_prob(z, fitted["means"][c], fitted["logvars"][c]))
            for c in range(3)
        )
    )
    np.testing.assert_allclose(latent_mixture.log_prob(z, fitted), by_hand, rtol=1e-5)


def test_samples_follow_the_mixture():
    mixture = {
        "log_weights": jnp.log(jnp.array([0.25, 0.75])),
        "means": jnp.array([[-10.0, 0.0], [10.0, 5.0]]),
        "logvars": jnp.log(jnp.array([[1.0, 1.0], [4.0, 0.25]])),
    }
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    z = np.asarray(jax.vmap(lambda k: latent_mixture.sample(k, mixture))(keys))
    right = z[:, 0] > 0
    assert right.mean() == pytest.approx(0.75, abs=0.03)
    np.testing.assert_allclose(z[right].mean(0), [10.0, 5.0], atol=0.1)
    np.testing.assert_allclose(z[right].std(0), [2.0, 0.5], rtol=0.1)


def test_more_components_than_points_is_a_clear_error():
    with pytest.raises(ValueError, match="5 mixture components need 1 to 4 points"):
        latent_mixture.fit(np.zeros((4, 2)), 5, jax.random.PRNGKey(0))
