"""The GAN's anti-collapse ingredients: D's minibatch standard deviation and TAC-GAN's twin
label head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from mmgen_jax import families, parallel
from mmgen_jax.families import gan
from mmgen_jax.models.layers import minibatch_stddev


def test_minibatch_stddev_by_hand():
    x = np.asarray(jax.random.normal(jax.random.key(0), (8, 4, 4, 3)))
    out = np.asarray(minibatch_stddev(jnp.asarray(x), 4))
    assert out.shape == (8, 4, 4, 4)
    np.testing.assert_array_equal(out[..., :3], x)
    # Group size 4 of 8 examples: example k * 2 + j is in group j.
    for j, members in enumerate(([0, 2, 4, 6], [1, 3, 5, 7])):
        want = np.sqrt(np.var(x[members], axis=0) + 1e-8).mean()
        for k in members:
            np.testing.assert_allclose(out[k, ..., 3], want, rtol=1e-5)
    # Near-copies give a near-zero channel: what D learns to spot.
    copies = np.repeat(x[:1], 8, axis=0)
    assert np.abs(np.asarray(minibatch_stddev(jnp.asarray(copies), 4))[..., 3]).max() < 1e-3
    # A batch smaller than the group size is one group.
    assert minibatch_stddev(jnp.asarray(x[:3]), 4).shape == (3, 4, 4, 4)


def test_minibatch_stddev_groups_the_global_batch():
    """Inside a mapped step the groups span all devices: 4 devices equal 1."""
    x = jax.random.normal(jax.random.key(1), (8, 4, 4, 3))
    mesh = parallel.make_mesh()
    mapped = jax.jit(
        jax.shard_map(
            lambda v: minibatch_stddev(v, 4, parallel.AXIS),
            mesh=mesh,
            in_specs=jax.sharding.PartitionSpec(parallel.AXIS),
            out_specs=jax.sharding.PartitionSpec(parallel.AXIS),
        )
    )
    np.testing.assert_allclose(mapped(x), minibatch_stddev(x, 4), rtol=1e-6)


def test_twin_head_cancels_the_label_pull():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    twin = jnp.array([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
    labels = jnp.array([0, 2])
    train = load_config("gan", "smoke").train
    ce = lambda z: -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(2), labels])
    only = gan.class_terms(train, {"class_logits": logits}, labels)
    both = gan.class_terms(train, {"class_logits": logits, "twin_logits": twin}, labels)
    w = train.aux_classifier_weight
    np.testing.assert_allclose(only, w * ce(logits), rtol=1e-6)
    np.testing.assert_allclose(both, w * (ce(logits) - ce(twin)), rtol=1e-6)


@pytest.mark.parametrize("field", ["twin_classifier", "d_minibatch_std", "augment"])
def test_switches_train_the_real_step(field, data_dir):
    """With the switch on, a data-parallel step on 4 devices runs, stays finite and, for the
    twin, trains D's twin head."""
    config = load_config("gan", "smoke")
    config.data.data_dir = data_dir
    if field == "twin_classifier":
        config.train.twin_classifier = True
    elif field == "augment":
        config.train.augment = "translation,cutout"
    else:
        config.model.d_minibatch_std = 4
    family = families.get("gan")(config)
    state = jax.jit(family.init)(jax.random.PRNGKey(0))
    batch = family.device_batch(family.example_batch(config.train.batch_size, seed=0))
    mesh = parallel.make_mesh()
    step = parallel.data_parallel(family.train_step, mesh)
    new_state, metrics = step(parallel.replicate(state, mesh), parallel.global_batch(batch, mesh))
    assert all(np.isfinite(float(v)) for v in jax.tree.leaves(metrics))
    heads = state.d.params["net"]
    if field == "twin_classifier":
        before = heads["twin_classes"]
        after = new_state.d.params["net"]["twin_classes"]
        assert jax.tree.leaves(jax.tree.map(lambda a, b: np.any(a != b), before, after))[0]
    else:
        assert "twin_classes" not in heads


def test_diff_augment_keeps_what_captions_state():
    from mmgen_jax import augment

    image = -np.ones((32, 32, 3), np.float32)
    image[..., 0] = 0.5  # a plain background colour
    image[10:20, 12:16] = 1.0  # a stroke
    images = jnp.asarray(np.stack([image] * 4))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(4))
    shifted = np.asarray(augment.diff_augment(images, keys, "translation"))
    # Edge padding continues the background: no new colours, the stroke keeps its area.
    assert set(map(tuple, shifted.reshape(-1, 3))) == set(map(tuple, image.reshape(-1, 3)))
    assert ((shifted == 1.0).all(-1).sum(axis=(1, 2)) == 40).all()
    assert len({s.tobytes() for s in shifted}) > 1  # per-example draws
    cut = np.asarray(augment.diff_augment(images, keys, "cutout"))
    assert set(map(tuple, cut.reshape(-1, 3))) <= set(map(tuple, image.reshape(-1, 3)))
    assert ((cut == 1.0).all(-1).sum(axis=(1, 2)) <= 40).all()
    np.testing.assert_array_equal(augment.diff_augment(images, keys, ""), images)
    # Gradients flow back to the images (the generator learns through the transforms).
    grad = jax.grad(lambda x: augment.diff_augment(x, keys, "translation,cutout").sum())(images)
    assert np.asarray(grad).sum() > 0
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        augment.parse("translation,colour")
