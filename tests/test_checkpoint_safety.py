"""What a checkpoint folder keeps is safe to resume from: at least one checkpoint, never a
non-finite state, and checksums that catch damaged files and fall back to an intact step."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmgen_jax import checkpoint


def _state(value):
    # Random values: Orbax compresses, and constant arrays would shrink to a few bytes.
    noise = jax.random.normal(jax.random.key(0), (50_000,))
    return {"w": noise + value, "n": jnp.int32(7)}


def _target():
    return checkpoint.abstract(
        jax.eval_shape(lambda: _state(0.0)), jax.sharding.SingleDeviceSharding(jax.devices()[0])
    )


def _saved(directory, steps, max_to_keep=3):
    ckpt = checkpoint.Checkpointer(str(directory), max_to_keep=max_to_keep)
    for step in steps:
        ckpt.save(step, _state(float(step)), {"position": step})
    ckpt.close()


@pytest.mark.parametrize("keep", [0, -1, 1.5, True])
def test_max_to_keep_below_one_is_refused(tmp_path, keep):
    with pytest.raises(ValueError, match=r"train.max_to_keep=.*keep at least 1 checkpoint"):
        checkpoint.Checkpointer(str(tmp_path / "c"), max_to_keep=keep)
    assert not (tmp_path / "c").exists()


def test_all_finite_inside_jit():
    good = {"a": jnp.ones(3), "key": jax.random.key(0), "n": jnp.int32(3)}
    assert bool(jax.jit(checkpoint.all_finite)(good))
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        tree = {**good, "b": jnp.array([1.0, bad], jnp.bfloat16)}
        assert not bool(jax.jit(checkpoint.all_finite)(tree))


@pytest.mark.parametrize("flag", [None, False, [True, False]])  # computed here, or by the loop
def test_a_non_finite_state_is_never_saved_and_good_ones_stay(tmp_path, flag):
    ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=1)
    ckpt.save(1, _state(1.0), {"position": 1})
    bad = _state(float("nan")) if flag is None else _state(2.0)
    with pytest.raises(checkpoint.NonFiniteState, match="step 2 holds NaN.*step 1, is finite"):
        ckpt.save(2, bad, {"position": 2}, finite=None if flag is None else jnp.array(flag))
    ckpt.close()
    reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
    assert reader.all_steps() == [1]
    state, data = reader.restore(_target())
    reader.close()
    assert np.allclose(state["w"], _state(1.0)["w"]) and data == {"position": 1}


def test_every_saved_step_gets_checksums_that_sha256sum_reads(tmp_path):
    _saved(tmp_path, [1, 2, 3], max_to_keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3"]
    for step in ("2", "3"):
        lines = (tmp_path / step / checkpoint.SUMS_FILE).read_text().splitlines()
        listed = {line.split("  ", 1)[1] for line in lines}
        on_disk = {
            os.path.relpath(os.path.join(root, f), tmp_path / step)
            for root, _, files in os.walk(tmp_path / step)
            for f in files
        } - {checkpoint.SUMS_FILE}
        assert listed == on_disk and any(n.startswith("state/") for n in listed)
        assert checkpoint.verify_step(str(tmp_path / step)) is None


def _largest_array_file(step_dir):
    files = [os.path.join(root, f) for root, _, names in os.walk(step_dir / "state") for f in names]
    return max(files, key=os.path.getsize)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        for i in range(len(data) // 4, len(data) // 4 + 400):
            data[i] ^= 0xFF
        f.seek(0)
        f.write(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, os.remove, _flip])
def test_a_damaged_latest_checkpoint_falls_back_to_the_intact_one(tmp_path, damage, caplog):
    directory = tmp_path / "checkpoints"
    _saved(directory, [1, 2])
    damage(_largest_array_file(directory / "2"))

    reader = checkpoint.Checkpointer(str(directory), read_only=True)
    with pytest.raises(checkpoint.DamagedCheckpoint, match=r"checkpoint 2 .* e.g. --step=1"):
        reader.restore(_target(), step=2)
    with caplog.at_level(logging.WARNING, logger="mmgen_jax"):
        state, data = reader.restore(_target())  # a reader moves nothing
    reader.close()
    assert data == {"position": 1} and np.allclose(state["w"], _state(1.0)["w"])
    assert "Checkpoint 2 in" in caplog.text and "--step=1" in caplog.text
    assert (directory / "2").exists()

    writer = checkpoint.Checkpointer(str(directory), max_to_keep=3)
    state, data = writer.restore(_target())
    assert data == {"position": 1}
    assert (tmp_path / "checkpoints-damaged" / "2").is_dir()
    writer.save(2, _state(2.0), {"position": 2})  # the resumed run saves step 2 again
    writer.close()
    reader = checkpoint.Checkpointer(str(directory), read_only=True)
    state, data = reader.restore(_target())
    reader.close()
    assert data == {"position": 2}
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(2.0)["w"]))


def test_every_checkpoint_damaged_says_so_in_one_paragraph(tmp_path):
    _saved(tmp_path, [1])
    _flip(_largest_array_file(tmp_path / "1"))
    reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="every checkpoint .* is damaged"):
        reader.restore(_target())
    reader.close()


def test_checkpoints_without_checksums_still_restore(tmp_path):
    _saved(tmp_path, [1])
    os.remove(tmp_path / "1" / checkpoint.SUMS_FILE)  # as written before checksums existed
    reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
    assert reader.restore(_target())[1] == {"position": 1}
    reader.close()
