"""The flow-matching family's math, sampler and guidance, and its per-index determinism.
(The family contract -- pmap, device count, resume, grids -- is tests/test_contract.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from mmgen_jax import families, runs
from mmgen_jax.data import tokenizer
from mmgen_jax.families import flow
from mmgen_jax.models import text as text_lib


def _family(*variants, **model):
    config = load_config("flow", ",".join(("smoke", *variants)))
    config.model.update(model)
    return families.get("flow")(config)


def _perturbed(family, seed=0, scale=0.2):
    """Sampling variables with every parameter moved off its initial value: at init the
    U-Net's zero-initialised output layers make every velocity 0, which would let guidance
    tests pass trivially."""

    params = jax.jit(family.init)(jax.random.PRNGKey(seed)).params
    # The noise drawn by numpy: a jitted normal draw per parameter compiled for ~7 s.
    rng = np.random.default_rng(seed)
    moved = jax.tree.map(
        lambda x: jnp.asarray(x + scale * rng.standard_normal(x.shape, dtype=np.float32)), params
    )
    return {"params": moved}


@pytest.fixture(scope="module")
def variables():
    """Perturbed variables of the smoke network; the sampling fields (guidance, sampler,
    steps) leave its parameter tree as it is, so every sampling test can read them."""
    return _perturbed(_family())


def _captions(n, length=48):
    texts = [
        f"a {c} handwritten {d} on a black background"
        for c, d in zip(["red", "green", "blue", "white"] * 4, ["one", "two", "seven", "nine"] * 4)
    ]
    return tokenizer.encode_batch(texts[:n], length)


# ---- the path and its velocity ---------------------------------------------------------


def test_straight_path_ends_at_image_and_noise_and_moves_at_the_target_velocity():
    x0, eps = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4, 3))
    ones = jnp.ones((3,))
    np.testing.assert_allclose(flow.interpolate(x0, eps, 0 * ones), x0)
    np.testing.assert_allclose(flow.interpolate(x0, eps, ones), eps)
    np.testing.assert_allclose(flow.interpolate(x0, eps, 0.25 * ones), 0.75 * x0 + 0.25 * eps)
    # d/dt of the path, by forward-mode differentiation, is the regression target.
    t = jnp.array([0.1, 0.5, 0.9])
    _, dxdt = jax.jvp(lambda s: flow.interpolate(x0, eps, s), (t,), (ones,))
    np.testing.assert_allclose(dxdt, flow.velocity_target(x0, eps), rtol=1e-6)
    np.testing.assert_allclose(flow.velocity_target(x0, eps), eps - x0)


def test_loss_is_zero_for_the_true_velocity_and_the_mse_otherwise():
    x0, eps = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 8, 8, 3))
    t = jnp.array([0.2, 0.4, 0.6, 0.8])
    # For one image x0, the field (x - x0) / t is exactly eps - x0 on its path.
    exact, per_example = flow.flow_matching_loss(
        lambda x, s: (x - x0) / s[:, None, None, None], x0, eps, t
    )
    assert float(exact) < 1e-10 and per_example.shape == (4,)
    zero, _ = flow.flow_matching_loss(lambda x, s: jnp.zeros_like(x), x0, eps, t)
    np.testing.assert_allclose(zero, jnp.mean((eps - x0) ** 2), rtol=1e-6)


# ---- the ODE sampler ---------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_euler_on_a_straight_field_reaches_its_endpoint_exactly(steps):
    x0 = jax.random.normal(jax.random.PRNGKey(2), (2, 5))
    x1 = jax.random.normal(jax.random.PRNGKey(3), (2, 5))
    end = flow.integrate(lambda x, t: (x - x0) / t[:, None], x1, steps, "euler")
    np.testing.assert_allclose(end, x0, atol=1e-5)
    constant = flow.integrate(lambda x, t: jnp.ones_like(x), x1, steps, "euler")
    np.testing.assert_allclose(constant, x1 - 1, atol=1e-6)


def test_heun_is_second_order_where_euler_is_first():
    """dx/dt = x from x(1) = 1 has x(0) = 1/e: Euler's error halves with twice the steps,
    Heun's quarters, and Heun with N steps beats Euler with 2N (same evaluations)."""
    x1 = jnp.ones((1, 1))

    def error(steps, sampler):
        end = flow.integrate(lambda x, t: x, x1, steps, sampler)
        return abs(float(end[0, 0]) - np.exp(-1.0))

    euler = [error(n, "euler") for n in (8, 16)]
    heun = [error(n, "heun") for n in (8, 16)]
    assert 1.8 < euler[0] / euler[1] < 2.2
    assert 3.6 < heun[0] / heun[1] < 4.4
    assert heun[0] < euler[1]
    with pytest.raises(ValueError, match="sampler 'rk4'"):
        flow.integrate(lambda x, t: x, x1, 4, "rk4")


# ---- caption dropout, times, guidance ----------------------------------------------------


def test_caption_dropout_replaces_captions_by_the_empty_one():
    tokens = jnp.asarray(_captions(16))
    index = jnp.arange(16, dtype=jnp.uint32)
    key = jax.random.PRNGKey(0)
    empty = np.zeros(48, np.int32)
    empty[0] = tokenizer.EOS
    np.testing.assert_array_equal(flow.empty_captions(tokens)[3], empty)
    assert tokenizer.decode(empty) == ""
    none_dropped, all_kept = flow.drop_captions(key, index, tokens, 0.0)
    np.testing.assert_array_equal(none_dropped, tokens)
    assert np.all(all_kept)
    dropped, kept = map(np.asarray, flow.drop_captions(key, index, tokens, 0.5))
    is_empty = (dropped == empty).all(1)
    assert 0 < is_empty.sum() < 16
    np.testing.assert_array_equal(kept, ~is_empty)  # what the caption label loss counts
    np.testing.assert_array_equal(dropped[~is_empty], np.asarray(tokens)[~is_empty])
    # Per example: the same index is dropped or kept whatever batch it comes in.
    np.testing.assert_array_equal(
        flow.drop_captions(key, index[8:], tokens[8:], 0.5)[0], dropped[8:]
    )


def test_caption_label_loss_averages_the_kept_captions_however_the_batch_is_split():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((8, 10), dtype=np.float32))
    labels = jnp.asarray(rng.integers(0, 10, 8))
    kept = jnp.asarray([1, 1, 1, 0, 0, 0, 1, 0], bool)  # 3 kept on shard 0, 1 on shard 1
    nll = -jax.nn.log_softmax(logits)[np.arange(8), labels]
    want = float(jnp.sum(jnp.where(kept, nll, 0)) / 4)

    def over(num_shards):
        split = lambda x: x.reshape(num_shards, -1, *x.shape[1:])
        shares = jax.vmap(
            lambda *a: jax.lax.pmean(flow.kept_caption_label_loss(*a, "data"), "data"),
            axis_name="data",
        )(split(logits), split(labels), split(kept))
        return np.asarray(shares)

    np.testing.assert_allclose(over(1), [want], rtol=1e-6)
    np.testing.assert_allclose(over(2), [want, want], rtol=1e-6)
    none_kept = jax.vmap(lambda *a: flow.kept_caption_label_loss(*a, "data"), axis_name="data")(
        logits[None], labels[None], jnp.zeros((1, 8), bool)
    )
    assert float(none_kept[0]) == 0.0


@pytest.mark.parametrize("kind", flow.TIME_SAMPLINGS)
def test_training_times_lie_in_0_1_and_depend_on_the_index_only(kind):
    key, index = jax.random.PRNGKey(4), jnp.arange(4000, dtype=jnp.uint32)
    t = np.asarray(flow.sample_times(key, index, kind))
    assert ((t > 0) & (t < 1)).all()
    assert abs(np.median(t) - 0.5) < 0.03
    # logit-normal crowds the middle: fewer times near the ends than uniform's 20%.
    ends = np.mean((t < 0.1) | (t > 0.9))
    assert (0.17 < ends < 0.23) if kind == "uniform" else ends < 0.08
    np.testing.assert_array_equal(flow.sample_times(key, index[100:110], kind), t[100:110])


def test_guidance_one_is_conditional_and_zero_unconditional():
    v_cond, v_uncond = jax.random.normal(jax.random.PRNGKey(5), (2, 3, 4))
    np.testing.assert_allclose(flow.guided(v_cond, v_uncond, 1.0), v_cond, atol=1e-6)
    np.testing.assert_array_equal(flow.guided(v_cond, v_uncond, 0.0), v_uncond)
    np.testing.assert_allclose(
        flow.guided(v_cond, v_uncond, 3.0), 3 * v_cond - 2 * v_uncond, atol=1e-5
    )


def _sampler(family):
    """family.generate jitted once: (variables, tokens, seed=0, indices=0..N-1) -> images."""
    generate = jax.jit(family.generate)

    def sample(variables, tokens, seed=0, indices=None):
        indices = jnp.arange(len(tokens), dtype=jnp.uint32) if indices is None else indices
        return np.asarray(
            generate(variables, jnp.asarray(tokens), jax.random.PRNGKey(seed), indices)
        )

    return sample


def test_generate_guidance_uses_the_conditional_and_the_empty_caption_branches(variables):
    tokens = _captions(4)
    conditional = _sampler(_family(guidance=1.0))
    cond = conditional(variables, tokens)
    uncond = conditional(variables, flow.empty_captions(jnp.asarray(tokens)))
    assert np.abs(cond - uncond).max() > 1e-3  # the caption matters to these parameters
    # w = 0 draws from the empty caption, whatever the caption: another compiled program, so
    # equal up to rounding accumulated over the ODE steps (2.7e-6 seen), far below 1e-3.
    np.testing.assert_allclose(
        _sampler(_family(guidance=0.0))(variables, tokens), uncond, atol=2e-5
    )
    # The two-branch combination (w not 0 or 1) is checked step by step below.


def test_one_guided_euler_step_is_the_guided_velocity_from_the_noise(variables):
    """With one Euler step the image is noise - v(noise, 1): check the guided combination
    of the network's two velocities end to end (before the [-1, 1] clip)."""
    family = _family(guidance=2.5, sample_steps=1)
    tokens = jnp.asarray(_captions(3))
    indices = jnp.arange(3, dtype=jnp.uint32)
    key = jax.random.PRNGKey(7)
    noise = flow.base.example_normal(key, indices, (32, 32, 3))
    ones = jnp.ones((3,))

    v = jax.jit(lambda t: family.net.apply(variables, noise, ones, t))
    expected = np.clip(noise - flow.guided(v(tokens), v(flow.empty_captions(tokens)), 2.5), -1, 1)
    np.testing.assert_allclose(_sampler(family)(variables, tokens, 7), expected, atol=1e-4)


def test_heun_sampling_differs_from_euler_on_the_network(variables):
    tokens = _captions(2)
    euler = _sampler(_family(sampler="euler", sample_steps=2))(variables, tokens)
    heun = _sampler(_family(sampler="heun", sample_steps=2))(variables, tokens)
    assert np.abs(euler - heun).max() > 1e-4


# ---- determinism ---------------------------------------------------------------------------


def test_samples_depend_on_seed_and_index_only_not_on_the_batch_size(variables):
    family = _family(guidance=2.0)
    run = runs.generator(family)
    tokens = np.repeat(_captions(4), 3, axis=0)  # 12 captions
    whole = runs.generate_from_tokens(family, variables, tokens, seed=3, batch_size=12, run=run)
    small = runs.generate_from_tokens(family, variables, tokens, seed=3, batch_size=4, run=run)
    # Equal up to float rounding: XLA may sum in another order for another batch shape.
    np.testing.assert_allclose(whole, small, atol=1e-4)
    # Image i is a function of (seed, i): the same rows from a batch that starts later.
    tail = _sampler(family)(variables, tokens[5:], 3, jnp.arange(5, 12, dtype=jnp.uint32))
    np.testing.assert_allclose(tail, whole[5:], atol=1e-4)
    other_seed = runs.generate_from_tokens(
        family, variables, tokens, seed=4, batch_size=12, run=run
    )
    assert np.abs(other_seed - whole).max() > 1e-3
    # The same caption at different indices draws different images.
    assert np.abs(whole[0] - whole[1]).max() > 1e-3


# ---- the network and the step ----------------------------------------------------------------


def test_text_encoder_token_states_leave_the_pooled_vector_unchanged():
    tokens = jnp.asarray(_captions(2))
    plain = text_lib.TextEncoder(max_len=48, width=16, embed_dim=8, out_dim=8, kind="conv")
    variables = plain.init(jax.random.PRNGKey(0), tokens)
    pooled, states, valid = plain.clone(return_states=True).apply(variables, tokens)
    np.testing.assert_array_equal(pooled, plain.apply(variables, tokens))
    assert states.shape == (2, 48, 16)
    np.testing.assert_array_equal(valid, tokens != tokenizer.PAD)


def test_layout_map_paints_the_lowest_resolution_from_the_conditioning_vector(variables):
    family = _family()
    assert family.config.model.layout_map  # on in the smoke config as in the default
    unet = variables["params"]["unet"]
    size = 32 // 2 ** (len(family.config.model.channel_mults) - 1)
    channels = family.config.model.width * family.config.model.channel_mults[-1]
    assert unet["layout"]["kernel"].shape == (family.config.model.cond_dim, size * size * channels)
    plain = jax.eval_shape(_family(layout_map=False).init, jax.random.PRNGKey(0)).params
    assert "layout" not in plain["unet"]
    # The path is live: other layout weights, another velocity for the same inputs.
    tokens = jnp.asarray(_captions(2))
    x, t = jnp.zeros((2, 32, 32, 3)), jnp.full((2,), 0.9)
    moved = jax.tree.map(lambda a: a, variables)
    moved["params"]["unet"]["layout"] = {k: v + 0.5 for k, v in unet["layout"].items()}
    apply = jax.jit(family.net.apply)
    assert np.abs(apply(moved, x, t, tokens) - apply(variables, x, t, tokens)).max() > 1e-4


def test_cross_attention_switch_adds_attention_that_reads_the_tokens():
    family = _family("cross_attention", attention_size=16)
    variables = _perturbed(family)
    attention = [k for k in variables["params"]["unet"] if k.endswith("_attn")]
    # The parameter tree without the switch (its shapes: nothing to compute).
    plain = jax.eval_shape(_family().init, jax.random.PRNGKey(0)).params
    assert attention and not [k for k in plain["unet"] if k.endswith("_attn")]
    tokens = jnp.asarray(_captions(2))
    x, t = jnp.zeros((2, 32, 32, 3)), jnp.full((2,), 0.5)
    v = jax.jit(family.net.apply)(variables, x, t, tokens)
    assert np.isfinite(np.asarray(v)).all()
    # The same network without its attention layers computes another velocity.
    no_attention = family.net.clone(unet=family.net.unet.clone(cross_attention=False))
    kept = {
        "params": {
            **variables["params"],
            "unet": {
                k: v for k, v in variables["params"]["unet"].items() if not k.endswith("_attn")
            },
        }
    }
    assert np.abs(v - jax.jit(no_attention.apply)(kept, x, t, tokens)).max() > 1e-4


def test_training_lowers_the_loss_and_the_caption_label_loss_on_a_fixed_batch():
    config = load_config("flow", "smoke")
    assert config.train.aux_classifier_weight > 0  # the caption label head is on
    config.train.lr = 1e-2
    family = families.get("flow")(config)
    state = jax.jit(family.init)(jax.random.PRNGKey(0))
    batch = family.device_batch(family.example_batch(8, seed=0))
    # Smooth images (a colour ramp), learnable unlike the example batch's uniform noise.
    ramp = np.linspace(-0.9, 0.9, 32, dtype=np.float32)
    batch["image"] = np.broadcast_to(ramp[None, :, None, None], (8, 32, 32, 3)).copy()
    step = jax.jit(
        lambda s, b: jax.vmap(family.train_step, axis_name="data")(s, b),
    )
    stacked = jax.tree.map(lambda x: x[None], state)
    one = jax.tree.map(lambda x: x[None], batch)
    losses, label_losses = [], []
    for i in range(30):
        # The same images each step, fresh noise and times (the step counter moves).
        stacked, metrics = step(stacked, one)
        losses.append(float(metrics["loss"][0]))
        label_losses.append(float(metrics["caption_class"][0]))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    # The head learns which label each caption names.
    assert np.mean(label_losses[-5:]) < 0.5 * np.mean(label_losses[:5]), label_losses


def test_bad_sampling_and_time_fields_name_the_field():
    config = load_config("flow", "smoke")
    config.model.sampler = "rk4"
    with pytest.raises(ValueError, match=r"config.model.sampler='rk4': use one of"):
        flow.Flow(config)
    config = load_config("flow", "smoke")
    config.train.time_sampling = "cosine"
    with pytest.raises(ValueError, match=r"config.train.time_sampling='cosine'"):
        flow.Flow(config)


def test_sampling_fields_change_a_copy_and_refuse_other_families():
    config = load_config("flow", "smoke")
    changed = runs.with_sampling(
        config, {"guidance": 4, "sample_steps": 16, "sampler": "heun"}, "r"
    )
    assert (changed.model.guidance, changed.model.sample_steps, changed.model.sampler) == (
        4.0,
        16,
        "heun",
    )
    assert isinstance(changed.model.guidance, float)
    assert config.model.guidance == 2.0  # the original is untouched
    assert runs.with_sampling(config, {"guidance": None}, "r") == config
    with pytest.raises(ValueError, match=r"--guidance: the 'gan' run in r has no model.guidance"):
        runs.with_sampling(load_config("gan", "smoke"), {"guidance": 2}, "r")
