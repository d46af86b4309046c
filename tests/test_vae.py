"""Multimodal VAE: the Gaussian / expert / ELBO math, caption decoding, determinism,
end-to-end runs of both fusions through `main` and the sampling CLI, and resume."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, load_config, run_command

from mmgen_jax import elbo, main, sample
from mmgen_jax.data import tokenizer
from mmgen_jax.families.vae import VAE


def _normal_logpdf(x, mean, var):
    return -0.5 * (math.log(2 * math.pi * var) + (x - mean) ** 2 / var)


# ---- math ------------------------------------------------------------------------------


def test_gaussian_kl_matches_closed_form_and_monte_carlo():
    mq, lq = jnp.array([0.5, -1.0]), jnp.log(jnp.array([0.3, 2.0]))
    mp, lp = jnp.array([0.0, 1.0]), jnp.log(jnp.array([1.0, 0.5]))
    # KL(N(a, s^2) || N(b, t^2)) = log(t/s) + (s^2 + (a-b)^2) / (2 t^2) - 1/2, per dimension.
    by_hand = sum(
        0.5 * math.log(vp / vq) + (vq + (a - b) ** 2) / (2 * vp) - 0.5
        for a, vq, b, vp in zip([0.5, -1.0], [0.3, 2.0], [0.0, 1.0], [1.0, 0.5])
    )
    assert float(elbo.gaussian_kl(mq, lq, mp, lp)) == pytest.approx(by_hand, rel=1e-6)
    z = jax.vmap(lambda k: elbo.reparameterize(k, mq, lq))(
        jax.random.split(jax.random.PRNGKey(0), 200_000)
    )
    mc = jnp.mean(elbo.gaussian_log_prob(z, mq, lq) - elbo.gaussian_log_prob(z, mp, lp))
    assert float(mc) == pytest.approx(by_hand, abs=0.02)
    # The default p is N(0, I); KL(q || q) = 0.
    zeros = jnp.zeros(2)
    assert float(elbo.gaussian_kl(mq, lq)) == pytest.approx(
        float(elbo.gaussian_kl(mq, lq, zeros, zeros)), rel=1e-6
    )
    assert float(elbo.gaussian_kl(mq, lq, mq, lq)) == pytest.approx(0.0, abs=1e-7)


def test_product_of_experts_matches_the_analytic_product():
    means = jnp.array([[1.0], [3.0]])
    logvars = jnp.log(jnp.array([[1.0], [0.5]]))
    # N(1, 1) * N(3, 0.5): precision 1 + 2 = 3, mean (1 * 1 + 2 * 3) / 3.
    mean, logvar = elbo.product_of_experts(means, logvars, prior=False)
    assert float(mean[0]) == pytest.approx(7 / 3) and float(jnp.exp(logvar[0])) == pytest.approx(
        1 / 3
    )
    # With the N(0, 1) prior expert: precision 4, mean (0 + 1 + 6) / 4.
    mean, logvar = elbo.product_of_experts(means, logvars)
    assert float(mean[0]) == pytest.approx(7 / 4) and float(jnp.exp(logvar[0])) == pytest.approx(
        1 / 4
    )
    # The normalised pointwise product of the densities on a grid has that mean and variance.
    x = np.linspace(-6, 8, 20001)
    log_density = _normal_logpdf(x, 0, 1) + _normal_logpdf(x, 1, 1) + _normal_logpdf(x, 3, 0.5)
    w = np.exp(log_density - log_density.max())
    w /= w.sum()
    assert (w * x).sum() == pytest.approx(7 / 4, abs=1e-6)
    assert (w * (x - 7 / 4) ** 2).sum() == pytest.approx(1 / 4, abs=1e-6)


def test_mixture_density_and_sampling():
    means = jnp.array([[[-10.0]], [[10.0]]])  # (E=2, B=1, D=1)
    logvars = jnp.log(jnp.array([[[1.0]], [[4.0]]]))
    z = jnp.array([[0.7]])
    expected = math.log(
        0.5 * math.exp(_normal_logpdf(0.7, -10, 1)) + 0.5 * math.exp(_normal_logpdf(0.7, 10, 4))
    )
    assert float(elbo.mixture_log_prob(z, means, logvars)[0]) == pytest.approx(expected, rel=1e-5)

    keys = jax.random.split(jax.random.PRNGKey(1), 20_000)
    samples, expert = jax.vmap(lambda k: elbo.mixture_sample(k, means, logvars))(keys)
    samples, expert = np.asarray(samples[:, 0, 0]), np.asarray(expert[:, 0])
    assert expert.mean() == pytest.approx(0.5, abs=0.02)  # experts picked uniformly
    assert np.all((samples > 0) == (expert == 1))  # each sample comes from its expert
    assert samples[expert == 0].mean() == pytest.approx(-10, abs=0.05)
    assert samples[expert == 1].std() == pytest.approx(2, abs=0.05)
    # Mixture variance: (1 + 4) / 2 + 100.
    assert samples.var() == pytest.approx(102.5, rel=0.03)


def test_elbo_terms_on_a_hand_sized_example():
    images = jnp.array([[[[0.5, -0.5]]]])  # (1, 1, 1, 2)
    mean = jnp.array([[[[0.0, 0.0]]]])
    gaussian = elbo.image_log_likelihood(images, mean, "gaussian", 0.5)
    # Two pixels, each off by 0.5 = one standard deviation: 2 * (-1/2 - log 0.5 - log(2 pi)/2).
    assert float(gaussian[0]) == pytest.approx(
        2 * (-0.5 - math.log(0.5) - 0.5 * math.log(2 * math.pi))
    )
    laplace = elbo.image_log_likelihood(images, mean, "laplace", 0.5)
    assert float(laplace[0]) == pytest.approx(2 * (-1.0 - math.log(1.0)))
    with pytest.raises(ValueError, match="likelihood"):
        elbo.image_log_likelihood(images, mean, "poisson", 1.0)

    # Caption [5, EOS, PAD]: vocabulary of 6, the logits put log 2 extra on token 5 everywhere.
    tokens = jnp.array([[5, 2, 0]])
    logits = jnp.zeros((1, 3, 6)).at[..., 5].set(math.log(2.0))
    ll, correct, count = elbo.caption_log_likelihood(logits, tokens)
    # p(5) = 2/7, p(EOS) = 1/7; the PAD position counts for nothing.
    assert float(ll[0]) == pytest.approx(math.log(2 / 7) + math.log(1 / 7), rel=1e-6)
    assert (float(correct[0]), float(count[0])) == (1.0, 2.0)

    kl = jnp.array([3.0])
    value = elbo.elbo([gaussian, ll], [1.0, 2.0], kl, beta=0.5)
    assert float(value[0]) == pytest.approx(float(gaussian[0] + 2 * ll[0] - 1.5), rel=1e-6)
    assert float(elbo.kl_warmup(50, 2.0, 200)) == pytest.approx(0.5)
    assert float(elbo.kl_warmup(500, 2.0, 200)) == pytest.approx(2.0)
    assert float(elbo.kl_warmup(0, 2.0, 0)) == pytest.approx(2.0)


# ---- the family ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_and_variables():
    config = load_config("vae", "smoke")
    family = VAE(config)
    state = jax.jit(family.init)(jax.random.PRNGKey(0))
    return family, family.sampling_variables(state)


def test_caption_decoding_shapes_and_end_of_caption(family_and_variables):
    family, variables = family_and_variables
    length = family.config.data.max_text_len
    images = jax.random.uniform(jax.random.PRNGKey(2), (3, 32, 32, 3), minval=-1, maxval=1)
    indices = jnp.arange(3, dtype=jnp.uint32)
    key = jax.random.PRNGKey(3)
    for temperature in (0.0, 1.0):
        tokens = np.asarray(family.describe(variables, images, key, indices, temperature))
        assert tokens.shape == (3, length) and tokens.dtype == np.int32
        for row in tokens:
            eos = list(row).index(tokenizer.EOS)  # every caption ends, at the latest at L - 1
            assert np.all(row[eos + 1 :] == tokenizer.PAD)
            assert np.all(row[:eos] >= 3)  # bytes only before the end: no PAD, BOS
    # Output layer set by hand (a copy of the params): logits = bias. 'a' always wins,
    # so the caption runs to the length limit, where EOS is forced ...
    params = jax.tree.map(lambda x: x, variables["params"])
    out = params["caption_decoder"]["out"]
    out["kernel"] = jnp.zeros_like(out["kernel"])
    bias = out["bias"].at[tokenizer.EOS].set(50.0).at[ord("a") + 3].set(100.0)
    out["bias"] = bias
    tokens = np.asarray(family.describe({"params": params}, images, key, indices))
    assert np.all(tokens == tokens[:1])  # greedy: 'a' at every step until the forced EOS
    assert list(tokens[0][:-1]) == [ord("a") + 3] * (length - 1)
    assert tokens[0][-1] == tokenizer.EOS
    # ... and when EOS wins at once, the caption is empty and all PAD after it.
    out["bias"] = bias.at[tokenizer.EOS].set(200.0)
    tokens = np.asarray(family.describe({"params": params}, images, key, indices))
    assert list(tokens[0]) == [tokenizer.EOS] + [tokenizer.PAD] * (length - 1)


def test_sampling_is_deterministic_per_seed_and_index(family_and_variables):
    family, variables = family_and_variables
    length = family.config.data.max_text_len
    captions = ["a red handwritten seven on a blue background", "the digit 3 in white over black"]
    tokens = jnp.asarray(tokenizer.encode_batch(captions, length))
    images = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3), minval=-1, maxval=1)
    idx = jnp.array([5, 9], jnp.uint32)
    key, other = jax.random.PRNGKey(0), jax.random.PRNGKey(1)

    @jax.jit
    def all_samples(key, idx, tokens, images):
        return (
            family.generate(variables, tokens, key, idx),
            family.describe(variables, images, key, idx, 1.0),
            *family.joint(variables, key, idx),
            *family.reconstruct(variables, images, tokens, key, idx),
        )

    first, again = all_samples(key, idx, tokens, images), all_samples(key, idx, tokens, images)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A sample depends on its own index only, not on its batch neighbours.
    # (Images up to float rounding: XLA may order a convolution's sums by batch size.)
    alone = all_samples(key, idx[1:], tokens[1:], images[1:])
    for a, b in zip(first, alone):
        a, b = np.asarray(a)[1:], np.asarray(b)
        if a.dtype == np.int32:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, atol=1e-5)
    # Another seed, other images from the caption and other joint samples.
    moved = all_samples(other, idx, tokens, images)
    assert not np.allclose(np.asarray(first[0]), np.asarray(moved[0]))
    assert not np.allclose(np.asarray(first[2]), np.asarray(moved[2]))
    images_out = np.asarray(first[0])
    assert images_out.shape == (2, 32, 32, 3) and np.abs(images_out).max() <= 1.0


def test_unknown_fusion_is_a_clear_error():
    config = load_config("vae", "smoke")
    config.model.fusion = "sum"
    with pytest.raises(ValueError, match="model.fusion='sum'"):
        VAE(config)


# ---- end to end ------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["poe", "moe"])
def test_main_smoke_run_and_sampling_modes(tmp_path, data_dir, fusion, restore_logging):
    """`main` and `sample`, run in-process through their flags as on the command line."""
    workdir = tmp_path / "run"
    run_command(
        main,
        f"--config={ROOT / 'configs' / 'vae.py'}:smoke,{fusion}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
    )
    for name in ("samples/step_3.png", "samples/step_6.png", "checkpoints/6", "manifest.json"):
        assert (workdir / name).exists(), name
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    for key in ("elbo", "recon_image", "recon_text", "kl", "text_accuracy", "beta"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[-1]["beta"] == pytest.approx(1.0)  # warm-up over 4 steps is done

    if fusion == "poe":  # the CLI is the same for both fusions: test its modes once
        return
    out = tmp_path / "captions"
    run_command(
        sample,
        f"--workdir={workdir}",
        "--mode=image2text",
        "--num=3",
        f"--out_dir={out}",
        "--batch_size=2",
    )
    index = [json.loads(line) for line in (out / "index.jsonl").read_text("utf-8").splitlines()]
    assert len(index) == 3 and all({"file", "caption", "reference"} <= set(r) for r in index)
    # The same images from a folder give the same captions.
    folder = tmp_path / "from_folder"
    run_command(
        sample,
        f"--workdir={workdir}",
        "--mode=image2text",
        f"--images_dir={out}",
        f"--out_dir={folder}",
    )
    again = [json.loads(line) for line in (folder / "index.jsonl").read_text("utf-8").splitlines()]
    assert [r["caption"] for r in again] == [r["caption"] for r in index]
    assert [r["source"] for r in again] == [r["file"] for r in index]
    for mode in ("joint", "reconstruct"):
        run_command(
            sample,
            f"--workdir={workdir}",
            f"--mode={mode}",
            "--num=2",
            f"--out_dir={tmp_path / mode}",
        )
        lines = (tmp_path / mode / "index.jsonl").read_text("utf-8").splitlines()
        assert len(lines) == 2 and (tmp_path / mode / "000001.png").exists()


def test_word_dropout_blanks_decoder_inputs_but_never_the_start(family_and_variables):
    family, _ = family_and_variables
    tokens = jnp.asarray(tokenizer.encode_batch(["a red handwritten seven"] * 64, 48))
    index = jnp.arange(64, dtype=jnp.uint32)
    inputs = np.asarray(family._decoder_inputs(tokens, index, jax.random.PRNGKey(0)))
    shifted = np.asarray(tokens)[:, :-1]
    assert np.all(inputs[:, 0] == 1)  # BOS stays
    kept = inputs[:, 1:] == shifted
    blank = inputs[:, 1:] == tokenizer.PAD
    assert np.all(kept | blank)
    real = shifted != tokenizer.PAD  # positions holding caption bytes or EOS
    rate = family.config.train.word_dropout
    assert blank[real].mean() == pytest.approx(rate, abs=0.03)
    again = family._decoder_inputs(tokens, index, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(inputs, np.asarray(again))
