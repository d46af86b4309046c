"""The data-parallel wrapper: several steps per dispatch, bfloat16 compute, donation. (The
step equal to jax.pmap and 4 devices equal to 1 are contract tests: test_contract.py.)"""

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


def test_steps_per_dispatch_equals_single_steps(smoke_config):
    """lax.scan over k steps per call computes what k separate calls compute."""
    family = families.get("gan")(smoke_config)
    state = jax.jit(family.init)(jax.random.PRNGKey(0))
    batches = [family.device_batch(b) for b in _batches(smoke_config, 4)]
    mesh = parallel.make_mesh()

    single = parallel.data_parallel(family.train_step, mesh, donate_state=False)
    s1, metrics1 = parallel.replicate(state, mesh), []
    for b in batches:
        s1, m = single(s1, parallel.global_batch(b, mesh))
        metrics1.append(m)

    double = parallel.data_parallel(
        family.train_step, mesh, donate_state=False, steps_per_dispatch=2
    )
    s2, metrics2 = parallel.replicate(state, mesh), []
    for group in parallel.Grouped(iter(batches), 2):
        s2, m = double(s2, parallel.global_batch(group, mesh, stacked=True))
        metrics2.extend(jax.tree.map(lambda x, i=i: x[i], m) for i in range(2))

    assert int(s2.step) == 4
    _assert_trees_close(jax.device_get(metrics2), jax.device_get(metrics1))
    # Inside the scan XLA may order a reduction differently than in the single step; Adam
    # divides the gradient by its own scale, so a last-bit difference moves a parameter by up
    # to a few 1e-6 over four steps (seen: 4.1e-6 on one weight of 16,384).
    _assert_trees_close(jax.device_get(s2), jax.device_get(s1), atol=2e-5)


def test_bfloat16_compute_keeps_float32_params(smoke_config):
    smoke_config.model.dtype = "bfloat16"
    family = families.get("gan")(smoke_config)
    state = jax.jit(family.init)(jax.random.PRNGKey(0))
    batch = family.device_batch(_batches(smoke_config, 1)[0])
    mesh = parallel.make_mesh()
    step = parallel.data_parallel(family.train_step, mesh, donate_state=False)
    new_state, metrics = step(parallel.replicate(state, mesh), parallel.global_batch(batch, mesh))

    dtypes = {x.dtype for x in jax.tree.leaves((new_state.g.params, new_state.d.params))}
    assert dtypes == {np.dtype("float32")}
    assert all(np.isfinite(float(v)) for v in metrics.values())
    variables = jax.tree.map(np.asarray, family.sampling_variables(new_state))
    images = family.generate(
        variables, batch["text"][:2], jax.random.PRNGKey(1), np.arange(2, dtype=np.uint32)
    )
    # The networks really compute in bfloat16: every output value is a bfloat16 number.
    images = np.asarray(images, np.float32)
    np.testing.assert_array_equal(images, images.astype(jax.numpy.bfloat16).astype(np.float32))
    assert np.abs(images).max() > 0


def test_state_is_donated_on_accelerators_only():
    def step(state, batch):
        return state + jax.lax.pmean(batch.sum(), parallel.AXIS), {}

    mesh = parallel.make_mesh()
    batch = parallel.global_batch(np.ones((8, 2), np.float32), mesh)
    for donate, kept in ((None, True), (True, False)):  # default on CPU: not donated
        state = parallel.replicate(np.zeros(3, np.float32), mesh)
        new_state, _ = parallel.data_parallel(step, mesh, donate_state=donate)(state, batch)
        np.testing.assert_array_equal(new_state, np.full(3, 4.0))
        assert state.is_deleted() != kept
