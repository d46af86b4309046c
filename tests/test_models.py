"""Networks: exactness of the fast stride-2 convolutions, shapes, parameter counts, text masking,
and BatchNorm statistics under data parallelism."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from mmgen_jax.models import (Conv2xDown, ConvTranspose2x, Discriminator, Generator,
                              TextEncoder)

# Parameter counts of the PyTorch peer (shared/peers/SPEC.md).
SPEC_G_PARAMS = 1_609_731
SPEC_D_PARAMS = 680_001


def _assert_close(actual, expected, rtol=1e-4):
  """Elementwise error within `rtol` of the largest magnitude (float32 sums reorder)."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * np.abs(expected).max())


def _num_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(tree):
  return jax.tree.map(lambda x: x.shape, tree)


# (layer, the Flax layer with the same parameters, input shape, features)
LAYER_CASES = [
    (ConvTranspose2x, lambda f: nn.ConvTranspose(f, (4, 4), strides=2, padding=2), s, f)
    for s, f in [((3, 4, 4, 16), 8), ((2, 8, 8, 8), 12), ((2, 16, 16, 4), 3), ((2, 5, 7, 3), 5)]
] + [
    (Conv2xDown, lambda f: nn.Conv(f, (4, 4), strides=2, padding=1), s, f)
    for s, f in [((3, 4, 4, 16), 8), ((2, 8, 8, 8), 12), ((2, 16, 16, 3), 4), ((2, 7, 9, 3), 5)]
]


@pytest.mark.parametrize("layer, flax_layer, shape, features", LAYER_CASES,
                         ids=[f"{c[0].__name__}-{c[2]}-{c[3]}" for c in LAYER_CASES])
def test_fast_layer_equals_textbook_values_and_gradients(layer, flax_layer, shape, features):
  kx, kp, kc = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  variables = layer(features).init(kp, x)
  # Identical parameters and initial values to Flax's own layer: checkpoints interchange.
  assert jax.tree.all(jax.tree.map(jnp.array_equal, variables, flax_layer(features).init(kp, x)))
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # a non-zero bias, too

  def loss_fn(apply):
    y = jax.eval_shape(apply, variables, x)
    cotangent = jax.random.normal(kc, y.shape)
    return jax.jit(jax.value_and_grad(
        lambda v, x: jnp.vdot(apply(v, x), cotangent), argnums=(0, 1)))

  fast = layer(features, impl="fast")
  textbook = layer(features, impl="textbook")
  _assert_close(fast.apply(variables, x), flax_layer(features).apply(variables, x))
  _assert_close(textbook.apply(variables, x), flax_layer(features).apply(variables, x))
  (value, (dv, dx)) = loss_fn(fast.apply)(variables, x)
  (ref_value, (ref_dv, ref_dx)) = loss_fn(textbook.apply)(variables, x)
  _assert_close(value, ref_value)
  _assert_close(dx, ref_dx)
  jax.tree.map(_assert_close, dv, ref_dv)


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
      full[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4] += np.einsum("bc,cdkl->bkld", x[:, i, j], wt)
  expected = full[:, 1:-1, 1:-1]
  kernel = wt.transpose(2, 3, 0, 1)[::-1, ::-1]
  got = ConvTranspose2x(cout, use_bias=False).apply({"params": {"kernel": kernel}}, x)
  _assert_close(got, expected)

  # Conv2d(cin, cout, 4, stride=2, padding=1): output m reads padded pixels 2m .. 2m + 3.
  wc = rng.normal(size=(cout, cin, 4, 4)).astype(np.float32)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.stack([np.stack([
      np.einsum("bklc,dckl->bd", xp[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4], wc)
      for j in range(w // 2)], axis=1) for i in range(h // 2)], axis=1)
  got = Conv2xDown(cout, use_bias=False).apply(
      {"params": {"kernel": wc.transpose(2, 3, 1, 0)}}, x)
  _assert_close(got, expected)


def _gan_shapes(image_size, conditioning="concat", nz=100, text_dim=128):
  """Parameter and output shapes of G and D, without compiling anything."""
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
  return (Generator(image_size=16, base_width=8, text_proj_dim=8, **kw),
          Discriminator(image_size=16, base_width=8, text_proj_dim=8, **kw))


def _small_batch(batch):
  kz, kt, kx = jax.random.split(jax.random.key(1), 3)
  return (jax.random.normal(kz, (batch, 16)), jax.random.normal(kt, (batch, 12)),
          jax.random.uniform(kx, (batch, 16, 16, 3), minval=-1, maxval=1))


def test_networks_fast_equal_textbook_in_training_mode():
  z, t, x = _small_batch(4)
  g_fast, d_fast = _small_gan(impl="fast")
  g_book, d_book = _small_gan(impl="textbook")
  g_vars = g_fast.init(jax.random.key(2), z, t, train=False)
  d_vars = d_fast.init(jax.random.key(3), x, t, train=False)
  assert _shapes(g_vars) == _shapes(g_book.init(jax.random.key(2), z, t, train=False))
  assert _shapes(d_vars) == _shapes(d_book.init(jax.random.key(3), x, t, train=False))
  for fast, book, v, inputs in [(g_fast, g_book, g_vars, (z, t)), (d_fast, d_book, d_vars, (x, t))]:
    out, stats = fast.apply(v, *inputs, train=True, mutable=["batch_stats"])
    ref_out, ref_stats = book.apply(v, *inputs, train=True, mutable=["batch_stats"])
    _assert_close(out, ref_out)
    jax.tree.map(_assert_close, stats, ref_stats)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  z, t, x = _small_batch(2)
  g, d = _small_gan(dtype=jnp.bfloat16)
  g_vars = g.init(jax.random.key(2), z, t, train=False)
  d_vars = d.init(jax.random.key(3), x, t, train=False)
  assert {v.dtype for v in jax.tree.leaves((g_vars, d_vars))} == {jnp.dtype(jnp.float32)}
  fake, _ = g.apply(g_vars, z, t, train=True, mutable=["batch_stats"])
  logits, _ = d.apply(d_vars, fake, t, train=True, mutable=["batch_stats"])
  assert fake.dtype == logits.dtype == jnp.float32
  assert np.isfinite(logits).all()


@pytest.mark.parametrize("net", ["generator", "discriminator"])
def test_batch_norm_statistics_are_global_under_shard_map(net):
  """With axis_name='data', each device normalises with, and records, the statistics of the
  global batch: the sharded step matches one device running the whole batch."""
  mesh = Mesh(jax.devices(), ("data",))
  z, t, x = _small_batch(2 * mesh.size)
  local, mapped = _small_gan(axis_name=None), _small_gan(axis_name="data")
  k = 0 if net == "generator" else 1
  local, mapped = local[k], mapped[k]
  inputs = (z, t) if net == "generator" else (x, t)
  # train=False needs no statistics, so even the mapped model initialises outside shard_map.
  variables = mapped.init(jax.random.key(2), *inputs, train=False)

  def step(variables, *inputs):
    return mapped.apply(variables, *inputs, train=True, mutable=["batch_stats"])

  sharded = jax.jit(jax.shard_map(
      step, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=(P("data"), P())))
  out, stats = sharded(variables, *inputs)
  ref_out, ref_stats = local.apply(variables, *inputs, train=True, mutable=["batch_stats"])
  _assert_close(out, ref_out)
  jax.tree.map(_assert_close, stats, ref_stats)
  # ... and the running averages did move (from their init of zeros and ones).
  assert not jax.tree.all(
      jax.tree.map(jnp.array_equal, stats["batch_stats"], variables["batch_stats"]))


@pytest.mark.parametrize("kind", ["transformer", "conv"])
def test_text_encoder_ignores_padding(kind):
  encoder = TextEncoder(kind=kind, max_len=16, width=32, embed_dim=16, out_dim=24)
  short = jnp.array([[72, 105, 33, 0, 0, 0], [5, 6, 7, 8, 9, 10], [0, 0, 0, 0, 0, 0]], jnp.int32)
  longer = jnp.pad(short, ((0, 0), (0, 10)))  # the same captions padded to 16 tokens
  variables = encoder.init(jax.random.key(0), longer, train=False)
  a = encoder.apply(variables, short, train=False)
  b = encoder.apply(variables, longer, train=False)
  assert a.shape == (3, 24) and a.dtype == jnp.float32
  assert np.isfinite(a).all() and np.isfinite(b).all()
  _assert_close(a, b, rtol=1e-5)
  # The empty caption encodes to the output layer's bias: nothing else reaches it.
  _assert_close(a[2], variables["params"]["out"]["bias"], rtol=1e-6)
  # Changing a real token does change the encoding.
  c = encoder.apply(variables, short.at[0, 1].set(106), train=False)
  assert not np.allclose(a[0], c[0])
  with pytest.raises(ValueError, match="max_len"):
    encoder.apply(variables, jnp.ones((1, 17), jnp.int32), train=False)
