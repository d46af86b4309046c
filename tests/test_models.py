"""Networks: exactness of the fast stride-2 convolutions, shapes, parameter counts, text masking,
and BatchNorm statistics under data parallelism."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mmgen_jax.models import Conv2xDown, ConvTranspose2x, Discriminator, Generator, TextEncoder

# Parameter counts of the PyTorch peer (shared/peers/SPEC.md).
SPEC_G_PARAMS = 1_609_731
SPEC_D_PARAMS = 680_001

# Our layers and the Flax layers that hold the same parameters and compute the same function.
FLAX_TWIN = {
    ConvTranspose2x: lambda f: nn.ConvTranspose(f, (4, 4), strides=2, padding=2),
    Conv2xDown: lambda f: nn.Conv(f, (4, 4), strides=2, padding=1),
}


def _assert_close(actual, expected, rtol=1e-4):
    """Elementwise error within `rtol` of the largest magnitude (float32 sums reorder)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * np.abs(expected).max())


def _num_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(tree):
    return jax.tree.map(lambda x: x.shape, tree)


def _random_like(key, tree):
    """Normal values in the shapes of `tree`, drawn flat: XLA:CPU compiles rank-4 draws slowly."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [jax.random.normal(k, (x.size,)).reshape(x.shape) for k, x in zip(keys, leaves)]
    )


def test_layers_initialise_like_flax():
    """Same parameter names, shapes and initial values as Flax's layers: checkpoints interchange."""
    x = jnp.zeros((2, 8, 8, 3))

    @jax.jit
    def init_all(key):
        return [
            (layer(5, impl=impl).init(key, x), twin(5).init(key, x))
            for layer, twin in FLAX_TWIN.items()
            for impl in ("fast", "textbook")
        ]

    for ours, theirs in init_all(jax.random.key(0)):
        assert jax.tree.all(jax.tree.map(jnp.array_equal, ours, theirs))


# (layer, input shape, features): batch > 1, C_in != C_out, the DCGAN sizes and odd ones.
LAYER_CASES = [
    (layer, shape, features)
    for layer in (ConvTranspose2x, Conv2xDown)
    for shape, features in [
        ((3, 4, 4, 16), 8),
        ((2, 8, 8, 8), 12),
        ((2, 16, 16, 3), 4),
        ((2, 5, 7, 3), 5),
    ]
]


@pytest.mark.parametrize(
    "layer, shape, features",
    LAYER_CASES,
    ids=[f"{c[0].__name__}-{c[1]}-{c[2]}" for c in LAYER_CASES],
)
def test_fast_layer_equals_textbook_values_and_gradients(layer, shape, features):
    kx, kp, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape)
    variables = _random_like(kp, jax.eval_shape(layer(features).init, kp, x))
    reference = FLAX_TWIN[layer](features).apply(variables, x)
    cotangent = jax.random.normal(kc, reference.shape)

    @jax.jit
    def forward_and_gradients(variables, x):
        """Per impl: output, and gradients of <output, cotangent> w.r.t. parameters and input."""

        def run(impl):
            apply = layer(features, impl=impl).apply
            grads = jax.grad(lambda v, x: jnp.vdot(apply(v, x), cotangent), argnums=(0, 1))
            return apply(variables, x), grads(variables, x)

        return run("fast"), run("textbook")

    (y, grads), (ref_y, ref_grads) = forward_and_gradients(variables, x)
    _assert_close(ref_y, reference)
    _assert_close(y, reference)
    jax.tree.map(_assert_close, grads, ref_grads)


def test_layers_match_pytorch_definitions():
    """Direct loops over PyTorch's definitions, with PyTorch-layout weights converted as the
    `layers` docstring says."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    n, h, w, cin = x.shape
    cout = 4

    # ConvTranspose2d(cin, cout, 4, stride=2, padding=1): input pixel i scatters to 2i - 1 + k.
    wt = rng.normal(size=(cin, cout, 4, 4)).astype(np.float32)
    full = np.zeros((n, 2 * h + 2, 2 * w + 2, cout), np.float32)
    for i in range(h):
        for j in range(w):
            full[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += np.einsum(
                "bc,cdkl->bkld", x[:, i, j], wt
            )
    kernel = wt.transpose(2, 3, 0, 1)[::-1, ::-1]
    got = ConvTranspose2x(cout, use_bias=False).apply({"params": {"kernel": kernel}}, x)
    _assert_close(got, full[:, 1:-1, 1:-1])

    # Conv2d(cin, cout, 4, stride=2, padding=1): output m reads padded pixels 2m .. 2m + 3.
    wc = rng.normal(size=(cout, cin, 4, 4)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.stack(
        [
            np.stack(
                [
                    np.einsum("bklc,dckl->bd", xp[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4], wc)
                    for j in range(w // 2)
                ],
                axis=1,
            )
            for i in range(h // 2)
        ],
        axis=1,
    )
    kernel = wc.transpose(2, 3, 1, 0)
    got = Conv2xDown(cout, use_bias=False).apply({"params": {"kernel": kernel}}, x)
    _assert_close(got, expected)


def _gan_shapes(image_size, conditioning="concat", nz=100, text_dim=128):
    """Variables of G and D and their output shapes, without compiling anything."""
    key = jax.random.key(0)
    z, t = jnp.zeros((2, nz)), jnp.zeros((2, text_dim))
    images = jnp.zeros((2, image_size, image_size, 3))
    g = Generator(image_size=image_size)
    d = Discriminator(image_size=image_size, conditioning=conditioning)
    g_vars = jax.eval_shape(lambda: g.init(key, z, t, train=False))
    d_vars = jax.eval_shape(lambda: d.init(key, images, t, train=False))
    fake = jax.eval_shape(lambda v: g.apply(v, z, t, train=False), g_vars)
    logits = jax.eval_shape(lambda v: d.apply(v, images, t, train=False), d_vars)
    return g_vars, d_vars, fake, logits


def test_parameter_counts_match_spec():
    g_vars, d_vars, _, _ = _gan_shapes(32)
    assert _num_params(g_vars["params"]) == SPEC_G_PARAMS
    assert _num_params(d_vars["params"]) == SPEC_D_PARAMS


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("conditioning", ["concat", "projection"])
def test_gan_output_shapes(image_size, conditioning):
    _, _, fake, logits = _gan_shapes(image_size, conditioning)
    assert fake.shape == (2, image_size, image_size, 3) and fake.dtype == jnp.float32
    assert logits.shape == (2,) and logits.dtype == jnp.float32


def test_bad_image_size_is_rejected():
    with pytest.raises(ValueError, match="image_size"):
        _gan_shapes(48)


def _small_gan(**kw):
    return (
        Generator(image_size=16, base_width=8, text_proj_dim=8, **kw),
        Discriminator(image_size=16, base_width=8, text_proj_dim=8, **kw),
    )


def _small_batch(batch):
    kz, kt, kx = jax.random.split(jax.random.key(1), 3)
    return (
        jax.random.normal(kz, (batch, 16)),
        jax.random.normal(kt, (batch, 12)),
        jax.random.uniform(kx, (batch, 16, 16, 3), minval=-1, maxval=1),
    )


@pytest.fixture(scope="module")
def small_gan_variables():
    """Variables of `_small_gan()`, shared by every variant (impl, dtype, axis_name)."""
    z, t, x = _small_batch(2)
    g, d = _small_gan()
    return jax.jit(lambda key: (g.init(key, z, t, train=False), d.init(key, x, t, train=False)))(
        jax.random.key(2)
    )


def _train_apply(net, variables, *inputs):
    return net.apply(variables, *inputs, train=True, mutable=["batch_stats"])


def test_networks_fast_equal_textbook_in_training_mode(small_gan_variables):
    z, t, x = _small_batch(4)
    g_vars, d_vars = small_gan_variables

    @jax.jit
    def outputs():
        """Per impl: (G images, G batch stats), (D logits, D batch stats)."""
        return [
            (_train_apply(g, g_vars, z, t), _train_apply(d, d_vars, x, t))
            for g, d in (_small_gan(impl="fast"), _small_gan(impl="textbook"))
        ]

    jax.tree.map(_assert_close, *outputs())


def test_bfloat16_compute_keeps_float32_params_and_outputs(small_gan_variables):
    z, t, _ = _small_batch(2)
    g, d = _small_gan(dtype=jnp.bfloat16)
    g_vars, d_vars = small_gan_variables
    bf16_vars = jax.eval_shape(lambda: g.init(jax.random.key(0), z, t, train=False))
    assert _shapes(bf16_vars) == _shapes(g_vars)
    assert {v.dtype for v in jax.tree.leaves(bf16_vars)} == {jnp.dtype(jnp.float32)}

    @jax.jit
    def fake_and_logits():
        fake, _ = _train_apply(g, g_vars, z, t)
        return fake, _train_apply(d, d_vars, fake, t)[0]

    fake, logits = fake_and_logits()
    assert fake.dtype == logits.dtype == jnp.float32
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("net", ["generator", "discriminator"])
def test_batch_norm_statistics_are_global_under_shard_map(net, small_gan_variables):
    """With axis_name='data', each device normalises with, and records, the statistics of the
    global batch: the sharded step matches one device running the whole batch."""
    mesh = Mesh(jax.devices(), ("data",))
    z, t, x = _small_batch(2 * mesh.size)
    k = ["generator", "discriminator"].index(net)
    local, mapped = _small_gan(axis_name=None)[k], _small_gan(axis_name="data")[k]
    variables = small_gan_variables[k]
    inputs = [(z, t), (x, t)][k]
    # train=False needs no statistics, so the mapped model also initialises outside shard_map.
    mapped_vars = jax.eval_shape(lambda: mapped.init(jax.random.key(0), *inputs, train=False))
    assert _shapes(mapped_vars) == _shapes(variables)

    sharded = jax.jit(
        jax.shard_map(
            lambda v, *inputs: _train_apply(mapped, v, *inputs),
            mesh=mesh,
            in_specs=(P(), P("data"), P("data")),
            out_specs=(P("data"), P()),
        )
    )
    out, stats = sharded(variables, *inputs)
    ref_out, ref_stats = jax.jit(lambda v, *inputs: _train_apply(local, v, *inputs))(
        variables, *inputs
    )
    _assert_close(out, ref_out)
    jax.tree.map(_assert_close, stats, ref_stats)
    # ... and the running averages did move (from their init of zeros and ones).
    assert not jax.tree.all(
        jax.tree.map(jnp.array_equal, stats["batch_stats"], variables["batch_stats"])
    )


@pytest.mark.parametrize("kind", ["transformer", "conv"])
def test_text_encoder_ignores_padding(kind):
    encoder = TextEncoder(kind=kind, max_len=16, width=32, embed_dim=16, out_dim=24)
    short = jnp.array([[72, 105, 33, 0, 0, 0], [5, 6, 7, 8, 9, 10], [0] * 6], jnp.int32)
    longer = jnp.pad(short, ((0, 0), (0, 10)))  # the same captions padded to 16 tokens
    variables = jax.jit(lambda key: encoder.init(key, longer, train=False))(jax.random.key(0))
    encode = jax.jit(lambda tokens: encoder.apply(variables, tokens, train=False))
    a, b = encode(short), encode(longer)
    assert a.shape == (3, 24) and a.dtype == jnp.float32
    assert np.isfinite(a).all() and np.isfinite(b).all()
    _assert_close(a, b, rtol=1e-5)
    # The empty caption encodes to the output layer's bias: nothing else reaches it.
    np.testing.assert_array_equal(a[2], variables["params"]["out"]["bias"])
    # A real token does count.
    assert not np.allclose(a[0], encode(short.at[0, 1].set(106))[0])
    with pytest.raises(ValueError, match="max_len"):
        encoder.apply(variables, jnp.ones((1, 17), jnp.int32), train=False)


def test_spectral_norm_discriminator_tracks_each_layers_top_singular_value():
    d = Discriminator(
        image_size=16, base_width=8, text_proj_dim=8, norm="spectral", conditioning="projection"
    )
    _, t, x = _small_batch(2)
    variables = jax.jit(lambda key: d.init(key, x, t, train=False))(jax.random.key(0))
    assert "bn2" not in variables["params"]  # no BatchNorm beside spectral normalisation

    @jax.jit
    def power_iterations(variables):
        for _ in range(30):
            logits, stats = _train_apply(d, variables, x, t)
            variables = {**variables, **stats}
        return logits, variables

    logits, variables = power_iterations(variables)
    assert logits.shape == (2,) and np.isfinite(logits).all()
    sigmas = {
        name.split("/")[0]: float(value)
        for layer in variables["batch_stats"].values()
        for name, value in layer.items()
        if name.endswith("/sigma")
    }
    assert set(sigmas) == {"down1", "down2", "text_proj", "out"}
    for name, sigma in sigmas.items():
        kernel = np.asarray(variables["params"][name]["kernel"])
        top = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
        np.testing.assert_allclose(sigma, top, rtol=1e-2)  # power iteration: 30 steps


def test_icnr_kernel_gives_every_output_phase_the_same_taps():
    from mmgen_jax.models.layers import icnr

    kernel = icnr()(jax.random.PRNGKey(0), (4, 4, 3, 5))
    phases = [kernel[rh::2, rw::2] for rh in (0, 1) for rw in (0, 1)]
    for phase in phases[1:]:
        np.testing.assert_array_equal(phase, phases[0])
    # The shared taps keep the default initialiser's scale (fan-in of the full kernel).
    default = nn.initializers.lecun_normal()(jax.random.PRNGKey(0), (4, 4, 3, 5))
    np.testing.assert_array_equal(phases[0], default[::2, ::2])
    # So the layer is a nearest-neighbour 2x upsampling (shifted by a pixel) of one conv:
    # every 2x2 block of its output, from the second pixel on, holds one value.
    layer = ConvTranspose2x(5, kernel_init=icnr())
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 3))
    y = np.asarray(layer.apply(layer.init(jax.random.PRNGKey(2), x), x))[:, 1:-1, 1:-1]
    blocks = y.reshape(2, 5, 2, 5, 2, 5)
    np.testing.assert_allclose(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))
    with pytest.raises(ValueError, match="icnr initialises"):
        icnr()(jax.random.PRNGKey(0), (3, 3, 3, 5))


def test_checkerboard_free_upsampling_at_initialisation():
    """At initialisation the default sub-pixel generator's images carry a phase-periodic
    pattern (most of their power above half Nyquist); ICNR and resize-conv do not."""
    from mmgen_jax.evaluation import metrics

    z = jax.random.normal(jax.random.PRNGKey(1), (32, 16))
    text = jax.random.normal(jax.random.PRNGKey(2), (32, 16))
    share, shapes = {}, {}
    for upsample in ("transpose", "icnr", "resize_conv", "icnr_resize_out"):
        g = Generator(image_size=32, base_width=8, text_proj_dim=16, upsample=upsample)
        variables = g.init(jax.random.PRNGKey(0), z[:1], text[:1], train=False)
        images = g.apply(variables, z, text, train=False)
        share[upsample] = metrics.high_frequency_share(np.asarray(images)).mean()
        shapes[upsample] = _shapes(variables)
    assert share["transpose"] > 0.5
    assert share["icnr"] < share["transpose"] / 3
    assert share["resize_conv"] < share["transpose"] / 3
    assert share["icnr_resize_out"] < share["transpose"] / 3
    assert shapes["icnr"] == shapes["transpose"]  # checkpoints interchangeable
    # Only the output step differs: its 3x3 kernel replaces the 4x4 transposed one.
    flat = {k: flax.traverse_util.flatten_dict(v, sep="/") for k, v in shapes.items()}
    differ = set(flat["icnr"].items()) ^ set(flat["icnr_resize_out"].items())
    assert {name.split("/")[1] for name, _ in differ} == {"up3"}
    with pytest.raises(ValueError, match="upsample must be one of"):
        Generator(upsample="bilinear").init(jax.random.PRNGKey(0), z[:1], text[:1], train=False)
