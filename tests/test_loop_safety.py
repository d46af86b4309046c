"""The training loop with the safety pieces wired in (issue 18): one run per workdir, the
config checked without a checkpoint, a damaged latest checkpoint replaced by the intact one,
device counts compared against the last training start."""

import json
import os
import shutil

import pytest
from conftest import copy_run
from test_checkpoint_safety import _flip, _largest_array_file
from test_train import _metrics

from mmgen_jax import checkpoint, train, workdir_lock


def test_a_second_run_on_a_workdir_refuses_before_touching_it(tmp_path, smoke_config):
    with workdir_lock.WorkdirLock(str(tmp_path)):  # a live run of this process holds it
        with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()} on "):
            train.train_and_evaluate(smoke_config, str(tmp_path))
        assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lock.LOCK_FILE]


def test_config_is_checked_when_no_checkpoint_is_left(tmp_path, smoke_config, two_step_run):
    copy_run(two_step_run[0], tmp_path)
    smoke_config.train.num_steps = 2
    shutil.rmtree(tmp_path / "checkpoints")
    os.rename(tmp_path / "metrics.jsonl", tmp_path / "metrics.old.jsonl")
    smoke_config.train.lr_g = 5e-3
    with pytest.raises(ValueError, match=r"different config \(train.lr_g: 0.0002 -> 0.005"):
        train.train_and_evaluate(smoke_config, str(tmp_path))


def test_a_damaged_latest_checkpoint_is_replaced_by_training_again(tmp_path, smoke_config, caplog):
    smoke_config.train.num_steps = 6
    smoke_config.train.log_every = 1  # rows then average one step each: comparable
    work = tmp_path / "damaged"
    train.train_and_evaluate(smoke_config, str(work))
    straight = _metrics(work)
    _flip(_largest_array_file(work / "checkpoints" / "6"))
    with caplog.at_level("WARNING", logger="mmgen_jax"):
        train.train_and_evaluate(smoke_config, str(work))
    assert "Checkpoint 6 in" in caplog.text and "using step 3" in caplog.text
    assert (work / "checkpoints-damaged" / "6").is_dir()
    assert checkpoint.verify_step(str(work / "checkpoints" / "6")) is None
    assert _metrics(work) == straight  # steps 4-6 redone, the same, not appended twice


def test_device_warning_compares_against_the_last_training_start(
    tmp_path, smoke_config, caplog, two_step_run
):
    copy_run(two_step_run[0], tmp_path)
    smoke_config.train.num_steps = 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["device_count"] = 2  # as if the training so far had run on 2 devices
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    train.train_and_evaluate(smoke_config, str(tmp_path))  # nothing to do: changes no record
    assert json.loads((tmp_path / "manifest.json").read_text())["device_count"] == 2
    smoke_config.train.num_steps = 4
    with caplog.at_level("WARNING", logger="mmgen_jax"):
        train.train_and_evaluate(smoke_config, str(tmp_path))
    assert "last trained on 2 devices and resumes on 4" in caplog.text
    starts = json.loads((tmp_path / "manifest.json").read_text())["starts"]
    assert [s["start_step"] for s in starts] == [0, 2, 2]
