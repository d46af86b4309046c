"""A diagonal Gaussian mixture over latent codes, fitted by EM: ex-post density estimation
(Ghosh et al. 2020). A VAE whose posteriors are narrow leaves most of N(0, I) where no
decoder was trained; a mixture fitted to the aggregate posterior (codes of training
examples) puts joint samples where the decoders have been.

A mixture is a dict of arrays: "log_weights" (C,), "means" (C, D), "logvars" (C, D).
Pure jnp functions; no project imports but the Gaussian math of `elbo`.
"""

import jax
import jax.numpy as jnp

from mmgen_jax import elbo


def component_log_probs(z, mixture):
    """(N, C): log w_c + log N(z_n; mean_c, var_c)."""
    per = elbo.gaussian_log_prob(z[:, None], mixture["means"][None], mixture["logvars"][None])
    return per + mixture["log_weights"][None]


def log_prob(z, mixture):
    """log p(z) under the mixture, per row of z (N, D) -> (N,)."""
    return jax.nn.logsumexp(component_log_probs(z, mixture), axis=-1)


def fit(points, num_components, key, iterations=100, min_variance=1e-4):
    """EM on `points` (N, D) from means at `num_components` distinct points drawn with `key`,
    the points' variance and equal weights; deterministic in `key`. Variances are kept at
    least `min_variance` so that no component collapses onto one point."""
    points = jnp.asarray(points, jnp.float32)
    n = points.shape[0]
    if not 1 <= num_components <= n:
        raise ValueError(f"{num_components} mixture components need 1 to {n} points")
    start = jax.random.choice(key, n, (num_components,), replace=False)
    spread = jnp.log(jnp.maximum(jnp.var(points, axis=0), min_variance))
    mixture = {
        "log_weights": jnp.full((num_components,), -jnp.log(num_components)),
        "means": points[start],
        "logvars": jnp.broadcast_to(spread, (num_components, points.shape[1])),
    }

    def step(_, mixture):
        resp = jax.nn.softmax(component_log_probs(points, mixture), axis=-1)  # (N, C)
        mass = jnp.sum(resp, axis=0) + 1e-8
        means = resp.T @ points / mass[:, None]
        second = resp.T @ jnp.square(points) / mass[:, None]
        variance = jnp.maximum(second - jnp.square(means), min_variance)
        return {"log_weights": jnp.log(mass / n), "means": means, "logvars": jnp.log(variance)}

    return jax.lax.fori_loop(0, iterations, step, mixture)


def sample(key, mixture):
    """One draw (D,) from the mixture: a component by its weight, then its Gaussian."""
    key_pick, key_z = jax.random.split(key)
    c = jax.random.categorical(key_pick, mixture["log_weights"])
    return elbo.reparameterize(key_z, mixture["means"][c], mixture["logvars"][c])
