"""The data-parallel step: equals jax.pmap of the same per-device function, and a
4-device step equals a 1-device step on the same global batch."""

import jax
import numpy as np

from mmgen_jax import families, parallel
from mmgen_jax.data import pipeline


def _batches(config, n):
    stream = pipeline.TrainStream(
        name=config.data.name,
        data_dir=config.data.data_dir,
        split="train",
        image_size=config.data.image_size,
        max_text_len=config.data.max_text_len,
        global_batch_size=config.train.batch_size,
        seed=config.seed,
    )
    return [next(stream) for _ in range(n)]


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol),
        a,
        b,
    )


def test_shard_map_step_equals_pmap(smoke_config):
    assert jax.device_count() == 4
    family = families.get("gan")(smoke_config)
    state = jax.jit(family.init)(jax.random.PRNGKey(0))
    batch = family.device_batch(_batches(smoke_config, 1)[0])

    mesh = parallel.make_mesh()
    step = parallel.data_parallel(family.train_step, mesh, donate_state=False)
    new_state, metrics = step(parallel.replicate(state, mesh), parallel.global_batch(batch, mesh))

    n = jax.device_count()
    stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), state)
    split = jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), batch)
    p_state, p_metrics = jax.pmap(family.train_step, axis_name=parallel.AXIS)(stacked, split)

    _assert_trees_close(metrics, jax.tree.map(lambda x: x[0], p_metrics))
    _assert_trees_close(new_state, jax.tree.map(lambda x: x[0], p_state))


def test_four_devices_equal_one_device(smoke_config):
    family = families.get("gan")(smoke_config)
    state = jax.jit(family.init)(jax.random.PRNGKey(0))
    batches = [family.device_batch(b) for b in _batches(smoke_config, 3)]

    def run(devices):
        mesh = parallel.make_mesh(devices)
        step = parallel.data_parallel(family.train_step, mesh, donate_state=False)
        s, history = parallel.replicate(state, mesh), []
        for b in batches:
            s, m = step(s, parallel.global_batch(b, mesh))
            history.append(m)
        return jax.device_get(s), jax.device_get(history)

    state4, metrics4 = run(jax.devices())
    state1, metrics1 = run(jax.devices()[:1])
    _assert_trees_close(metrics4, metrics1, rtol=1e-4, atol=1e-5)
    _assert_trees_close(state4, state1, rtol=1e-4, atol=1e-5)
    assert int(state4.step) == 3
