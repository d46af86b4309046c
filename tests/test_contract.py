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


def _smoke_config(name, data_dir):
    c = load_config(name, "smoke")
    c.data.data_dir = data_dir
    c.train.checkpoint_every = 2
    c.train.eval_every = 0  # a run evaluates at its last step: a stop would add a row
    return c


@pytest.fixture(params=NAMES)
def config(request, data_dir):
    return _smoke_config(request.param, data_dir)


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, data_dir):
    """name -> (workdir, final state) of a family's 6-step smoke run that saves every 2
    steps, trained once per module on first use."""
    done = {}

    def get(name):
        if name not in done:
            workdir = tmp_path_factory.mktemp(f"straight_{name}")
            done[name] = (
                workdir,
                train.train_and_evaluate(_smoke_config(name, data_dir), str(workdir)),
            )
        return done[name]

    return get


@pytest.fixture(scope="module", params=NAMES)
def stepping(request, data_dir):
    """The family, its initial state, two real device batches and its step over all 4
    devices, built once per family: the tests below reuse the one compiled step."""
    config = _smoke_config(request.param, data_dir)
    family = families.get(config.model.family)(config)
    mesh = parallel.make_mesh()
    state = jax.jit(family.init, out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
    batches = [family.device_batch(b) for b in _real_batches(config, 2)]
    return family, state, batches, mesh, parallel.data_parallel(family.train_step, mesh)


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


def test_data_parallel_step_equals_pmap(stepping):
    assert jax.device_count() == 4
    family, state, batches, mesh, step = stepping
    batch = batches[0]
    new_state, metrics = step(state, parallel.global_batch(batch, mesh))

    n = jax.device_count()
    stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), state)
    split = jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), batch)
    p_state, p_metrics = jax.pmap(family.train_step, axis_name=parallel.AXIS)(stacked, split)

    _assert_trees_close(metrics, jax.tree.map(lambda x: x[0], p_metrics))
    _assert_trees_close(new_state, jax.tree.map(lambda x: x[0], p_state))


def test_four_devices_equal_one_device(stepping):
    family, state, batches, mesh4, step4 = stepping

    def run(mesh, step):
        s, history = parallel.replicate(state, mesh), []
        for b in batches:
            s, m = step(s, parallel.global_batch(b, mesh))
            history.append(m)
        return jax.device_get(s), jax.device_get(history)

    mesh1 = parallel.make_mesh(jax.devices()[:1])
    state4, metrics4 = run(mesh4, step4)
    state1, metrics1 = run(mesh1, parallel.data_parallel(family.train_step, mesh1))
    _assert_trees_close(metrics4, metrics1, rtol=1e-4, atol=1e-5)
    # Adam's first steps turn gradients that are zero up to rounding (e.g. a bias followed
    # by a normalisation) into steps of about +-lr, whatever the summation order: the
    # parameters agree to that scale; the metrics of the second step, which read them, agree
    # tightly above.
    _assert_trees_close(state4, state1, rtol=1e-4, atol=4e-3)
    assert int(state4.step) == 2


def test_example_batch_is_shaped_like_real_data_and_trains(stepping):
    """The benchmark's synthetic batch: the fields, shapes and dtypes the step reads from
    real data, and a finite step on it."""
    family, state, batches, mesh, step = stepping
    size = family.config.train.batch_size
    fake = family.device_batch(family.example_batch(size, seed=3))
    assert {k: (v.shape, v.dtype) for k, v in fake.items()} == {
        k: (v.shape, v.dtype) for k, v in batches[0].items()
    }
    _, metrics = step(state, parallel.global_batch(fake, mesh))
    assert metrics and all(np.isfinite(float(v)) for v in jax.device_get(metrics).values())


def test_smoke_run_writes_its_files_and_resumes_bit_identically(config, tmp_path, straight_runs):
    """The loop on real data: files of a finished run, then a run stopped after step 4 and
    resumed to 6 equals the run that went straight through, bit for bit."""
    family = families.get(config.model.family)(config)
    done, straight = straight_runs(config.model.family)
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


def test_grid_columns_follow_the_capabilities(stepping):
    family, state, batches, _, _ = stepping
    if not (family.can(base.TEXT_TO_IMAGE) or family.can(base.JOINT)):
        pytest.skip(f"{family.config.model.family} draws nothing")
    batch = batches[0]
    variables = family.sampling_variables(state)
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


def test_init_from_starts_from_another_runs_parameters(tmp_path, data_dir, straight_runs):
    donor_dir, donor = straight_runs("gan")
    config = _smoke_config("gan", data_dir)
    config.init_from = str(donor_dir)
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
