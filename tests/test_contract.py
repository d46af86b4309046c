"""The family contract, checked for every registered family: a family gets these tests by
registering in `mmgen_jax.families.FAMILIES` (with its config in configs/<name>.py, which
must have a `smoke` variant)."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import load_config

from mmgen_jax import families, parallel, train
from mmgen_jax.data import pipeline
from mmgen_jax.families import base

NAMES = sorted(families.FAMILIES)


@pytest.fixture(params=NAMES)
def config(request, data_dir):
    c = load_config(request.param, "smoke")
    c.data.data_dir = data_dir
    return c


def _real_batches(config, n):
    d = config.data
    stream = pipeline.TrainStream(
        name=d.name,
        data_dir=d.data_dir,
        split=d.train_split,
        image_size=d.image_size,
        max_text_len=d.max_text_len,
        global_batch_size=config.train.batch_size,
        seed=config.seed,
        builder_kwargs=pipeline.builder_kwargs(d),
    )
    try:
        return [next(stream) for _ in range(n)]
    finally:
        stream.close()


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol),
        a,
        b,
    )


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in ("wall_time", "steps_per_sec")} for r in rows]


def test_data_parallel_step_equals_pmap(config):
    assert jax.device_count() == 4
    family = families.get(config.model.family)(config)
    state = jax.jit(family.init)(jax.random.PRNGKey(0))
    batch = family.device_batch(_real_batches(config, 1)[0])

    mesh = parallel.make_mesh()
    step = parallel.data_parallel(family.train_step, mesh)
    new_state, metrics = step(parallel.replicate(state, mesh), parallel.global_batch(batch, mesh))

    n = jax.device_count()
    stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), state)
    split = jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), batch)
    p_state, p_metrics = jax.pmap(family.train_step, axis_name=parallel.AXIS)(stacked, split)

    _assert_trees_close(metrics, jax.tree.map(lambda x: x[0], p_metrics))
    _assert_trees_close(new_state, jax.tree.map(lambda x: x[0], p_state))


def test_four_devices_equal_one_device(config):
    family = families.get(config.model.family)(config)
    state = jax.jit(family.init)(jax.random.PRNGKey(0))
    batches = [family.device_batch(b) for b in _real_batches(config, 2)]

    def run(devices):
        mesh = parallel.make_mesh(devices)
        step = parallel.data_parallel(family.train_step, mesh)
        s, history = parallel.replicate(state, mesh), []
        for b in batches:
            s, m = step(s, parallel.global_batch(b, mesh))
            history.append(m)
        return jax.device_get(s), jax.device_get(history)

    state4, metrics4 = run(jax.devices())
    state1, metrics1 = run(jax.devices()[:1])
    _assert_trees_close(metrics4, metrics1, rtol=1e-4, atol=1e-5)
    # Adam's first steps turn gradients that are zero up to rounding (e.g. a bias followed
    # by a normalisation) into steps of about +-lr, whatever the summation order: the
    # parameters agree to that scale; the metrics of the second step, which read them, agree
    # tightly above.
    _assert_trees_close(state4, state1, rtol=1e-4, atol=4e-3)
    assert int(state4.step) == 2


def test_example_batch_is_shaped_like_real_data_and_trains(config):
    """The benchmark's synthetic batch: the fields, shapes and dtypes the step reads from
    real data, and a finite step on it."""
    family = families.get(config.model.family)(config)
    size = config.train.batch_size
    real = family.device_batch(_real_batches(config, 1)[0])
    fake = family.device_batch(family.example_batch(size, seed=3))
    assert {k: (v.shape, v.dtype) for k, v in fake.items()} == {
        k: (v.shape, v.dtype) for k, v in real.items()
    }
    mesh = parallel.make_mesh()
    state = jax.jit(family.init, out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
    _, metrics = parallel.data_parallel(family.train_step, mesh)(
        state, parallel.global_batch(fake, mesh)
    )
    assert metrics and all(np.isfinite(float(v)) for v in jax.device_get(metrics).values())


def test_smoke_run_writes_its_files_and_resumes_bit_identically(config, tmp_path):
    """The loop on real data: files of a finished run, then a run stopped after step 4 and
    resumed to 6 equals the run that went straight through, bit for bit."""
    config.train.checkpoint_every = 2
    config.train.eval_every = 0  # a run evaluates at its last step: the stop would add a row
    family = families.get(config.model.family)(config)
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    done = tmp_path / "straight"
    for name in ("config.json", "manifest.json", "metrics.jsonl", "checkpoints/6"):
        assert (done / name).exists(), name
    draws = family.can(base.TEXT_TO_IMAGE) or family.can(base.JOINT)
    assert (done / "samples" / "step_6.png").exists() == draws

    config.train.num_steps = 4
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    config.train.num_steps = 6
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert _metrics(tmp_path / "resumed") == _metrics(done)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        jax.device_get(straight),
        jax.device_get(resumed),
    )


def test_grid_columns_follow_the_capabilities(config):
    family = families.get(config.model.family)(config)
    if not (family.can(base.TEXT_TO_IMAGE) or family.can(base.JOINT)):
        pytest.skip(f"{config.model.family} draws nothing")
    batch = _real_batches(config, 1)[0]
    variables = family.sampling_variables(jax.jit(family.init)(jax.random.PRNGKey(0)))
    rows, cols = 2, 3
    columns = jax.jit(lambda v, x, t, k: family.grid_columns(v, x, t, k, cols))(
        variables, batch["image"][:rows], batch["text"][:rows], jax.random.PRNGKey(1)
    )
    titles = [c[0].text for c in columns]
    assert titles[0] == "real"
    expected = 1 + cols * (family.can(base.TEXT_TO_IMAGE) + family.can(base.JOINT))
    expected += family.can(base.RECONSTRUCT)
    assert len(columns) == expected
    for title, images, _ in columns:
        assert images.shape == batch["image"][:rows].shape, title.text
    # Captions are written under the real images only by a family that reads images.
    assert (columns[0][2] is not None) == family.can(base.IMAGE_TO_TEXT)


def test_a_family_must_implement_what_it_declares():
    class Incomplete(families.GAN):
        capabilities = frozenset({base.TEXT_TO_IMAGE, base.JOINT})

    with pytest.raises(TypeError, match=r"missing methods \['joint'\]"):
        base.check(Incomplete)


def test_init_from_starts_from_another_runs_parameters(tmp_path, data_dir):
    config = load_config("gan", "smoke")
    config.data.data_dir = data_dir
    config.train.num_steps = 2
    donor = train.train_and_evaluate(config, str(tmp_path / "donor"))

    config.init_from = str(tmp_path / "donor")
    config.train.num_steps = 0  # start only: the state it begins with
    config.train.lr_g = 1e-3  # optimiser settings may change: its state starts fresh
    started = train.train_and_evaluate(config, str(tmp_path / "tuned"))
    assert int(started.step) == 0
    for a, b in zip(jax.tree.leaves(started.g.params), jax.tree.leaves(donor.g.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a in jax.tree.leaves(started.g.opt_state):
        assert not np.asarray(a).any()  # Adam's moments and count from zero

    config.model.g_width = 16  # another architecture cannot take those parameters
    with pytest.raises(ValueError, match="init_from"):
        train.train_and_evaluate(config, str(tmp_path / "other"))
