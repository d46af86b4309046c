"""A smoke-trained multimodal VAE: its test-set likelihood (IWAE bounds), the captions of
its joint samples (valid UTF-8 by construction), and joint samples from a mixture fitted to
its training codes (the config's model.joint_prior, or `sample --joint_prior`)."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, run_command

from mmgen_jax import elbo, latent_mixture, parallel, runs, sample, train
from mmgen_jax.data import tokenizer
from mmgen_jax.evaluation import suite
from mmgen_jax.families import base
from mmgen_jax.models import vae as vae_lib


@pytest.fixture(scope="module", params=["moe", "poe"])
def trained(request, tmp_path_factory, data_dir):
    """(family, variables, 16 test examples, workdir) of a smoke run of each fusion."""
    config = load_config("vae", f"smoke,{request.param}")
    config.data.data_dir = data_dir
    workdir = tmp_path_factory.mktemp(f"vae_{request.param}")
    train.train_and_evaluate(config, str(workdir))
    _, family, variables = runs.load_run(str(workdir))
    test = suite.load_split(family.config, "test", 16, data_dir)
    return family, variables, test, workdir


def _bound(family, num_samples):
    """`family.log_likelihood` with K = `num_samples` as one program over the devices."""
    return parallel.BatchedMap(
        lambda shared, images, tokens, idx: family.log_likelihood(
            shared[0], images, tokens, shared[1], idx, num_samples
        )
    )


def _bounds(bound, variables, test, seed=0, batch_size=16):
    index = np.arange(len(test["text"]), dtype=np.uint32)
    key = jax.random.PRNGKey(seed)
    return bound((variables, key), test["image"], test["text"], index, batch_size=batch_size)


def test_a_single_sample_bound_is_the_elbo_estimate_of_those_draws(trained):
    """K = 1, recomputed here from the networks and elbo.py with the documented draws."""
    family, variables, test, _ = trained
    params = variables["params"]
    images, tokens = jnp.asarray(test["image"]), jnp.asarray(test["text"])
    index = jnp.arange(len(tokens), dtype=jnp.uint32)
    key = jax.random.PRNGKey(7)
    got = jax.jit(family.log_likelihood, static_argnums=5)(variables, images, tokens, key, index, 1)
    want = _single_sample_bounds(family, params, images, tokens, index, key)
    for name in ("joint", "image", "text"):
        assert got[name].shape == (len(tokens),)
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-2)
    # A density bound of 32x32x3 pixels and a 48-token caption: finite and of that order.
    assert np.all(np.isfinite(got["joint"]))
    assert np.all(np.asarray(got["text"]) < 0)  # a probability of discrete tokens


@functools.partial(jax.jit, static_argnums=0)
def _single_sample_bounds(family, params, images, tokens, index, key):
    """The K = 1 bounds from the networks, elbo.py and the documented draws."""
    t = family.config.train

    def apply(method, *args):
        return family.net.apply({"params": params}, *args, method=method)

    image_q, text_q = apply("encode_image", images), apply("encode_text", tokens)
    means, logvars = jnp.stack([image_q[0], text_q[0]]), jnp.stack([image_q[1], text_q[1]])
    poe = family.config.model.fusion == "poe"
    if poe:  # the prior joins every product
        joint_q = elbo.product_of_experts(means, logvars)
        image_q = elbo.product_of_experts(means[:1], logvars[:1])
        text_q = elbo.product_of_experts(means[1:], logvars[1:])

    def draw(m):
        return base.example_keys(jax.random.fold_in(jax.random.fold_in(key, m), 0), index)

    if poe:
        z_joint = jax.vmap(elbo.reparameterize)(draw(0), *joint_q)
        log_q_joint = elbo.gaussian_log_prob(z_joint, *joint_q)
    else:
        pick = jax.vmap(lambda k, m, v: elbo.mixture_sample(k, m, v)[0], in_axes=(0, 1, 1))
        z_joint = pick(draw(0), means, logvars)
        log_q_joint = elbo.mixture_log_prob(z_joint, means, logvars)
    z_image = jax.vmap(elbo.reparameterize)(draw(1), *image_q)
    z_text = jax.vmap(elbo.reparameterize)(draw(2), *text_q)

    def image_ll(z):
        decoded = apply("decode_image", z)
        return elbo.image_log_likelihood(images, decoded, t.image_likelihood, t.image_scale)

    def text_ll(z):
        return elbo.caption_log_likelihood(
            apply("decode_text", z, vae_lib.shift_right(tokens)), tokens
        )[0]

    def log_prior(z):
        return elbo.gaussian_log_prob(z, jnp.zeros_like(z), jnp.zeros_like(z))

    return {
        "joint": image_ll(z_joint) + text_ll(z_joint) + log_prior(z_joint) - log_q_joint,
        "image": image_ll(z_image) + log_prior(z_image) - elbo.gaussian_log_prob(z_image, *image_q),
        "text": text_ll(z_text) + log_prior(z_text) - elbo.gaussian_log_prob(z_text, *text_q),
    }


def test_the_bound_tightens_with_more_samples_and_is_deterministic(trained):
    family, variables, test, _ = trained
    bounds = {k: _bound(family, k) for k in (1, 8, 64)}
    by_k = {k: _bounds(bound, variables, test) for k, bound in bounds.items()}
    for name in ("joint", "image", "text"):
        means = [float(np.mean(by_k[k][name])) for k in (1, 8, 64)]
        assert means[0] <= means[1] + 1e-3 and means[1] <= means[2] + 1e-3, (name, means)
    # Same seed: the same numbers, whatever the batch split; another seed: others.
    again = _bounds(bounds[8], variables, test, batch_size=4)
    other = _bounds(bounds[8], variables, test, seed=1)
    for name in ("joint", "image", "text"):
        np.testing.assert_allclose(again[name], by_k[8][name], rtol=1e-5, atol=1e-3)
        assert not np.allclose(other[name], by_k[8][name])


def test_bits_per_dim_of_a_uniform_density_is_eight():
    # The uniform density on [-1, 1]^D, log p = -D log 2: every 8-bit value as likely.
    dims = 3072
    bits = suite.bits_per_dim(-dims * math.log(2.0), dims)
    assert bits == pytest.approx(math.log2(256) - math.log2(256 / 255), abs=1e-9)


def test_trained_joint_samples_and_sampled_captions_are_strict_utf8(trained):
    family, variables, test, _ = trained
    index = jnp.arange(64, dtype=jnp.uint32)
    _, joint_tokens = jax.jit(family.joint)(variables, jax.random.PRNGKey(0), index)
    images = jnp.asarray(np.resize(test["image"], (64,) + test["image"].shape[1:]))
    described = jax.jit(family.describe)(variables, images, jax.random.PRNGKey(1), index, 1.5)
    length = family.config.data.max_text_len
    for row in np.concatenate([np.asarray(joint_tokens), np.asarray(described)]):
        row = list(row)
        assert len(row) == length
        eos = row.index(tokenizer.EOS)
        assert all(t == tokenizer.PAD for t in row[eos + 1 :])
        bytes(t - tokenizer.BYTE_OFFSET for t in row[:eos]).decode("utf-8")  # strict


# `sample --mode=joint` flags -> the line it prints about the mixture it fits (None: none).
_SAMPLE_PRIOR_FLAGS = [
    ([], "4 Gaussians fitted to the codes of 64 training pairs"),  # the smoke config's
    (["--mixture_components=3", "--mixture_examples=48"], "3 Gaussians fitted to the codes of 48"),
    (["--joint_prior=standard"], None),
]


def _fit(family, variables, components, num_examples):
    return runs.with_joint_prior(
        family.config, family, variables, "mixture", 0, 16, None, components, num_examples
    )


def test_joint_samples_from_a_mixture_fitted_to_training_codes(trained, capsys, restore_logging):
    family, variables, _, workdir = trained
    fitted = _fit(family, variables, 3, 48)
    mixture = fitted["latent_mixture"]
    dim = family.config.model.latent_dim
    assert mixture["means"].shape == mixture["logvars"].shape == (3, dim)
    assert np.exp(mixture["log_weights"]).sum() == pytest.approx(1.0, abs=1e-5)
    # Fitted to the codes of those training pairs: EM keeps the mixture's mean at theirs.
    train_split = runs.examples(family.config, 48, family.config.data.train_split)
    codes = jax.jit(family.posterior)(
        variables,
        train_split["image"],
        train_split["text"],
        jax.random.split(jax.random.PRNGKey(0))[0],
        jnp.arange(48, dtype=jnp.uint32),
    )
    weights = np.exp(mixture["log_weights"])[:, None]
    np.testing.assert_allclose(np.sum(weights * mixture["means"], 0), codes.mean(0), atol=1e-4)
    assert np.all(np.isfinite(latent_mixture.log_prob(codes, mixture)))
    again = _fit(family, variables, 3, 48)
    np.testing.assert_array_equal(again["latent_mixture"]["means"], mixture["means"])
    # Without arguments, the config's model.joint_mixture_* (smoke: 4 of 64 pairs).
    by_config = _fit(family, variables, None, None)["latent_mixture"]
    assert by_config["means"].shape == (4, dim)
    assert runs.with_joint_prior(family.config, family, variables, "standard") is variables
    index = jnp.arange(8, dtype=jnp.uint32)
    key = jax.random.PRNGKey(0)
    joint = jax.jit(family.joint)
    images, tokens = joint(fitted, key, index)
    plain, _ = joint(variables, key, index)
    assert images.shape == plain.shape and not np.allclose(images, plain)
    for row in np.asarray(tokens):
        row = list(row)
        bytes(t - tokenizer.BYTE_OFFSET for t in row[: row.index(tokenizer.EOS)]).decode("utf-8")
    with pytest.raises(ValueError, match="a mixture of 3 components .* needs at least as many"):
        _fit(family, variables, 3, 2)
    if family.config.model.fusion == "poe":  # the command line is the same for both
        return
    # `sample` draws from the run's model.joint_prior (the smoke config's: a mixture of 4
    # components fitted to 64 pairs); --joint_prior and --mixture_* override it.
    capsys.readouterr()
    for k, (flags, fitted_line) in enumerate(_SAMPLE_PRIOR_FLAGS):
        out = workdir / f"joint_{k}"
        run_command(
            sample, f"--workdir={workdir}", "--mode=joint", "--num=4", f"--out_dir={out}", *flags
        )
        err = capsys.readouterr().err  # the log lines
        if fitted_line:
            assert fitted_line in err
        else:
            assert "Gaussians fitted" not in err
        rows = [json.loads(line) for line in (out / "index.jsonl").read_text("utf-8").splitlines()]
        assert len(rows) == 4 and (out / "000003.png").exists()
