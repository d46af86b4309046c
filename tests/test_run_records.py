"""A workdir's records survive whatever the user does: max_to_keep=0 is refused before
anything is deleted, metrics are never erased without a checkpoint to resume from, a
changed config is refused with or without a checkpoint, and manifest.json keeps every start."""

import json
import shutil

import jax
import pytest
from conftest import load_config

from mmgen_jax import run_config, train, writers


def test_max_to_keep_zero_is_refused_and_deletes_nothing(tmp_path, smoke_config):
    smoke_config.train.num_steps = 3
    train.train_and_evaluate(smoke_config, str(tmp_path))
    smoke_config.train.max_to_keep = 0
    smoke_config.train.num_steps = 6
    with pytest.raises(ValueError, match="train.max_to_keep=0: keep at least 1 checkpoint"):
        train.train_and_evaluate(smoke_config, str(tmp_path))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["3"]


def test_metrics_are_not_erased_when_no_checkpoint_is_left(tmp_path, smoke_config):
    smoke_config.train.num_steps = 4
    train.train_and_evaluate(smoke_config, str(tmp_path))
    rows = (tmp_path / "metrics.jsonl").read_text()
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(ValueError, match=r"no checkpoint to resume from.*mv .*metrics.jsonl"):
        train.train_and_evaluate(smoke_config, str(tmp_path))
    assert (tmp_path / "metrics.jsonl").read_text() == rows


def _rows(path, steps):
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in steps))


def test_rows_after_a_checkpoint_are_dropped_but_none_without_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _rows(path, [2, 4, 6])
    with pytest.raises(ValueError, match="holds 3 rows of training"):
        writers.MetricWriter(str(tmp_path), after_step=0)
    assert path.read_text().count("\n") == 3
    writers.MetricWriter(str(tmp_path), after_step=4).close()  # resumed at 4: 6 is redone
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4]


def test_config_is_checked_without_a_checkpoint(tmp_path):
    config = load_config("gan", "smoke")
    writers.write_json(str(tmp_path / "config.json"), json.loads(config.to_json()))
    assert run_config.check_matches_saved(str(tmp_path), config) == []
    config.train.lr_g = 5e-3
    config.eval.num_samples = 7
    with pytest.raises(ValueError, match=r"train.lr_g: .* -> 0.005; saved in .*config.json"):
        run_config.check_matches_saved(str(tmp_path), config, may_change=("eval.",))
    allowed = run_config.check_matches_saved(
        str(tmp_path), config, may_change=("eval.", "train.lr_g")
    )
    assert allowed == ["eval.num_samples", "train.lr_g"]
    assert run_config.check_matches_saved(str(tmp_path / "fresh"), config) == []


def test_manifest_keeps_every_start_and_the_last_training_one_on_top(tmp_path, monkeypatch):
    config = load_config("gan", "smoke")
    config.train.num_steps = 6
    workdir = str(tmp_path)
    assert writers.last_training_start(workdir) is None
    writers.record_start(workdir, config, start_step=0)
    writers.record_start(workdir, config, start_step=3, changed=["train.lr_g"])  # resumed
    real = writers.manifest
    monkeypatch.setattr(writers, "manifest", lambda c: {**real(c), "device_count": 2})
    manifest = writers.record_start(workdir, config, start_step=6)  # nothing left to do

    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    starts = manifest["starts"]
    assert [s["start_step"] for s in starts] == [0, 3, 6]
    assert [s["device_count"] for s in starts] == [4, 4, 2]
    assert [s["changed"] for s in starts] == [[], ["train.lr_g"], []]
    last = writers.last_training_start(workdir)
    assert last["start_step"] == 3 and last["device_count"] == 4 and "starts" not in last
    assert manifest["device_count"] == 4 and manifest["git"] == starts[1]["git"]


def test_a_manifest_from_before_starts_becomes_the_first_start(tmp_path):
    config = load_config("gan", "smoke")
    old = {**writers.manifest(config), "device_count": 8}
    writers.write_json(str(tmp_path / "manifest.json"), old)
    assert writers.last_training_start(str(tmp_path)) == old
    manifest = writers.record_start(str(tmp_path), config, start_step=config.train.num_steps)
    assert manifest["starts"][0] == old and manifest["device_count"] == 8
    assert len(manifest["starts"]) == 2


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_optimiser_settings_do_not_change_the_checkpointed_state(family):
    # Resuming with other learning rates or betas restores the same tree: they are optax
    # closure constants, not state. Only the config check has to allow them.
    from mmgen_jax import families

    def shapes(config):
        fam = families.get(config.model.family)(config, axis_name="data")
        return jax.eval_shape(fam.init, jax.random.PRNGKey(0))

    config = load_config(family, "smoke")
    before = shapes(config)
    for field in ("lr_g", "lr_d", "lr", "b1", "b2"):
        if field in config.train:
            config.train[field] = config.train[field] * 0.5
    assert jax.tree.structure(shapes(config)) == jax.tree.structure(before)
    assert jax.tree.leaves(shapes(config)) == jax.tree.leaves(before)
