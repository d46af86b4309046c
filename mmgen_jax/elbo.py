"""Pure math of the multimodal VAE: diagonal Gaussians, product and mixture of experts,
likelihoods and the ELBO terms (no project imports).

A diagonal Gaussian is a pair (mean, logvar) of arrays (..., D); densities and KLs sum over
the last axis. Log-likelihoods return one value per example (summed over its pixels or its
caption's tokens), so an objective is a weighted sum of per-example terms, averaged over the
batch by the caller.
"""

import math

import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)
IMAGE_LIKELIHOODS = ("gaussian", "laplace")  # p(x|z) of `image_log_likelihood`


def reparameterize(key, mean, logvar):
    """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): a sample with a pathwise gradient."""
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


def gaussian_log_prob(z, mean, logvar):
    """log N(z; mean, diag(exp(logvar))), summed over the last axis."""
    return -0.5 * jnp.sum(_LOG_2PI + logvar + (z - mean) ** 2 * jnp.exp(-logvar), axis=-1)


def gaussian_kl(mean_q, logvar_q, mean_p=None, logvar_p=None):
    """KL(q || p) of diagonal Gaussians in closed form; p defaults to N(0, I)."""
    if mean_p is None:
        mean_p, logvar_p = jnp.zeros_like(mean_q), jnp.zeros_like(logvar_q)
    ratio = jnp.exp(logvar_q - logvar_p)
    return 0.5 * jnp.sum(
        ratio + (mean_q - mean_p) ** 2 * jnp.exp(-logvar_p) - 1.0 - (logvar_q - logvar_p),
        axis=-1,
    )


def product_of_experts(means, logvars, prior=True):
    """The Gaussian proportional to the product of Gaussian experts (MVAE).

    means, logvars: (E, ..., D), one row per expert. With `prior`, a N(0, I) expert joins the
    product, so a single expert's posterior is pulled towards the prior as in MVAE. Precisions
    add; the mean is the precision-weighted average of the experts' means.
    """
    if prior:
        means = jnp.concatenate([jnp.zeros_like(means[:1]), means])
        logvars = jnp.concatenate([jnp.zeros_like(logvars[:1]), logvars])
    precision = jnp.exp(-logvars)
    total = jnp.sum(precision, axis=0)
    mean = jnp.sum(means * precision, axis=0) / total
    return mean, -jnp.log(total)


def mixture_log_prob(z, means, logvars):
    """log of the uniform mixture (1/E) sum_e N(z; means[e], logvars[e]) (MMVAE).

    z: (..., D); means, logvars: (E, ..., D).
    """
    per_expert = gaussian_log_prob(z[None], means, logvars)
    return jax.nn.logsumexp(per_expert, axis=0) - math.log(means.shape[0])


def mixture_sample(key, means, logvars):
    """One draw per example from the uniform mixture of the E experts: pick an expert per
    example, then sample it. -> (z (..., D), expert (...,))."""
    key_pick, key_z = jax.random.split(key)
    expert = jax.random.randint(key_pick, means.shape[1:-1], 0, means.shape[0])
    mean = jnp.take_along_axis(means, expert[None, ..., None], axis=0)[0]
    logvar = jnp.take_along_axis(logvars, expert[None, ..., None], axis=0)[0]
    return reparameterize(key_z, mean, logvar), expert


def image_log_likelihood(images, mean, likelihood, scale):
    """log p(x | decoded mean) per example, summed over pixels.

    likelihood: 'gaussian' (fixed standard deviation `scale`: the MSE of the design doc up to
    constants) or 'laplace' (fixed scale `scale`: an L1 reconstruction).
    """
    diff = (images - mean).reshape(images.shape[0], -1)
    if likelihood == "gaussian":
        per_pixel = -0.5 * (diff / scale) ** 2 - math.log(scale) - 0.5 * _LOG_2PI
    elif likelihood == "laplace":
        per_pixel = -jnp.abs(diff) / scale - math.log(2.0 * scale)
    else:
        raise ValueError(f"unknown image likelihood {likelihood!r}; use one of {IMAGE_LIKELIHOODS}")
    return jnp.sum(per_pixel, axis=-1)


def caption_log_likelihood(logits, tokens, pad_id=0):
    """log p(caption | z) per example and the per-token accuracy of the logits' argmax.

    logits: (B, L, V) predicting tokens (B, L) (teacher forced); positions holding `pad_id`
    (after end-of-caption) are not part of the caption and count for nothing.
    -> (log-likelihood (B,), correct-token count (B,), caption-token count (B,))
    """
    valid = (tokens != pad_id).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_log_prob = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)
    return (
        jnp.sum(token_log_prob * valid, axis=-1),
        jnp.sum(correct * valid, axis=-1),
        jnp.sum(valid, axis=-1),
    )


def elbo(log_likelihoods, weights, kl, beta=1.0):
    """sum_m w_m log p(x_m | z) - beta * KL, per example: the (weighted) ELBO. With unit
    weights and beta = 1 it is the evidence lower bound itself."""
    return sum(w * ll for w, ll in zip(weights, log_likelihoods, strict=True)) - beta * kl


def kl_warmup(step, beta, warmup_steps):
    """beta * min(1, step / warmup_steps): the KL weight rises linearly from 0 (no warm-up
    when warmup_steps is 0)."""
    if warmup_steps <= 0:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)
