"""End to end: the `main` entry point on the smoke config, resume, and config errors."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, copy_run

from mmgen_jax import checkpoint, families, parallel, train


def _main_command(workdir, data_dir, *overrides):
    return [
        sys.executable,
        "-m",
        "mmgen_jax.main",
        "--config=configs/gan.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *overrides,
    ]


def _main(workdir, data_dir, *overrides, check=True):
    return subprocess.run(
        _main_command(workdir, data_dir, *overrides),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=check,
    )


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    # wall-clock fields aside, a run's metrics are deterministic
    return [{k: v for k, v in r.items() if k not in ("wall_time", "steps_per_sec")} for r in rows]


def test_main_smoke_run_writes_everything(tmp_path, data_dir):
    workdir = tmp_path / "run"
    result = _main(workdir, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "config.json",
        "manifest.json",
        "metrics.jsonl",
        "samples/step_6.png",
        "checkpoints/6",
    ):
        assert (workdir / name).exists(), name
    assert list((workdir / "tensorboard").iterdir())
    rows = _metrics(workdir)
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in rows)
    manifest = json.loads((workdir / "manifest.json").read_text())
    assert manifest["device_count"] == 4 and manifest["versions"]["jax"] == jax.__version__
    assert "step 6/6" in result.stderr  # the progress line

    # Re-running the same command resumes: nothing left to do, nothing rewritten.
    again = _main(workdir, data_dir)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert [r["step"] for r in _metrics(workdir)] == [2, 4, 6]


def test_changed_experiment_in_same_workdir_is_refused(tmp_path, smoke_config, two_step_run):
    copy_run(two_step_run[0], tmp_path)
    smoke_config.train.num_steps = 2
    smoke_config.model.g_width = 16
    with pytest.raises(ValueError, match="model.g_width"):
        train.train_and_evaluate(smoke_config, str(tmp_path))


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path, data_dir):
    workdir = tmp_path / "run"
    cmd = _main_command(
        workdir,
        data_dir,
        "--config.train.num_steps=100000",
        "--config.train.checkpoint_every=100000",
        "--config.train.sample_every=100000",
        "--config.train.log_every=1",
    )
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # training is under way once a step has been logged
        if "step 3/" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, rest[-3000:]
    assert "Stop requested" in rest
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] >= 3
    # The same command resumes from the saved step.
    result = _main(workdir, data_dir, f"--config.train.num_steps={saved[-1] + 2}")
    assert f"Resumed from checkpoint at step {saved[-1]}" in result.stderr
    assert _metrics(workdir)[-1]["step"] == saved[-1] + 2


def test_steps_per_dispatch_trains_the_same_run(tmp_path, smoke_config):
    smoke_config.train.log_every = 3
    single = train.train_and_evaluate(smoke_config, str(tmp_path / "single"))
    smoke_config.train.steps_per_dispatch = 3
    scanned = train.train_and_evaluate(smoke_config, str(tmp_path / "scanned"))

    rows1, rows3 = _metrics(tmp_path / "single"), _metrics(tmp_path / "scanned")
    assert [r["step"] for r in rows3] == [3, 6]
    for a, b in zip(rows1, rows3, strict=True):
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-4, atol=1e-5)
    assert (tmp_path / "scanned" / "checkpoints" / "6").exists()
    # XLA fuses the scanned step differently. Its float rounding moves a near-zero gradient
    # by ~1e-7, and Adam (update ~ lr * g / |g|) turns that into up to a few lr = 2e-4 in a
    # parameter: compare at that scale.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-3),
        jax.device_get(single),
        jax.device_get(scanned),
    )


def test_steps_per_dispatch_must_divide_the_loop_boundaries(tmp_path, smoke_config):
    smoke_config.train.steps_per_dispatch = 4  # smoke logs every 2 and checkpoints every 3
    with pytest.raises(ValueError, match="log_every=2, checkpoint_every=3"):
        train.train_and_evaluate(smoke_config, str(tmp_path))


def test_resuming_on_another_device_count_warns(tmp_path, smoke_config, caplog, two_step_run):
    copy_run(two_step_run[0], tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["device_count"] == 4
    manifest["device_count"] = 2  # as if the first part had run on 2 devices
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    smoke_config.train.num_steps = 4
    with caplog.at_level("WARNING", logger="mmgen_jax"):
        train.train_and_evaluate(smoke_config, str(tmp_path))
    assert "last trained on 2 devices and resumes on 4" in caplog.text
    assert json.loads((tmp_path / "manifest.json").read_text())["device_count"] == 4


def test_a_diverged_state_is_never_checkpointed(tmp_path, smoke_config, monkeypatch):
    t = smoke_config.train
    t.num_steps, t.checkpoint_every, t.max_to_keep, t.sample_every = 2, 1, 2, 0
    train.train_and_evaluate(smoke_config, str(tmp_path))  # steps 1 and 2 saved

    class Diverging(families.GAN):
        """Its parameters become NaN from step 3 on."""

        def train_step(self, state, batch):
            new, metrics = super().train_step(state, batch)
            poison = jnp.where(state.step >= 2, jnp.nan, 1.0)
            params = jax.tree.map(lambda x: x * poison, new.g.params)
            return new.replace(g=new.g.replace(params=params)), metrics

    monkeypatch.setitem(families.FAMILIES, "gan", Diverging)
    t.num_steps, t.log_every = 6, 100  # no log step before the save at step 3
    with pytest.raises(FloatingPointError, match="by step 3 and was not saved") as error:
        train.train_and_evaluate(smoke_config, str(tmp_path))
    assert "step 2, the last finite state, is kept" in str(error.value)
    assert f"--config.init_from={tmp_path}" in str(error.value)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
    try:
        assert list(ckpt.manager.all_steps()) == [1, 2]
        like = jax.eval_shape(Diverging(smoke_config).init, jax.random.PRNGKey(0))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        state, _ = ckpt.restore(checkpoint.abstract(like, device), 2)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
    finally:
        ckpt.close()


def test_a_later_run_of_the_same_experiment_reuses_its_programs(smoke_config):
    """The loop's jitted init, step and grid are kept per experiment: a resumable field
    (num_steps) keeps them; a model field, the family's class or the mesh does not."""
    mesh = parallel.make_mesh()

    def programs(config, cls=families.GAN, mesh=mesh):
        family = cls(config, axis_name=parallel.AXIS)
        return (
            train._init_program(family, config, mesh),
            train._step_program(family, config, mesh, 1),
            train._grid_program(family, config, mesh),
        )

    first = programs(smoke_config)
    smoke_config.train.num_steps += 10
    assert all(a is b for a, b in zip(programs(smoke_config), first, strict=True))

    class Subclass(families.GAN):
        pass

    smaller = parallel.make_mesh(jax.devices()[:1])
    for other in (programs(smoke_config, Subclass), programs(smoke_config, mesh=smaller)):
        assert not any(a is b for a, b in zip(other, first, strict=True))
    smoke_config.model.noise_dim += 1
    assert not any(a is b for a, b in zip(programs(smoke_config), first, strict=True))
