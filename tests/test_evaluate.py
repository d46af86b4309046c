"""The domain evaluator's training, evaluation during training, and `evaluate` end to end."""

import dataclasses
import json
import shutil

import commands
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, load_config

from mmgen_jax import config_variants, runs, train
from mmgen_jax import evaluate as evaluate_command
from mmgen_jax.data import digits_domain as dd
from mmgen_jax.data import domains, tokenizer
from mmgen_jax.evaluation import metrics, settings, suite
from mmgen_jax.evaluation import report as evaluate
from mmgen_jax.families import base
from mmgen_jax.families.evaluator import gaussian_blur
from mmgen_jax.models.classifier import stroke_map


@pytest.fixture(scope="module")
def evaluator_dir(tmp_path_factory, data_dir):
    config = load_config("evaluator", "smoke")
    config.data.data_dir = data_dir
    workdir = tmp_path_factory.mktemp("evaluator")
    train.train_and_evaluate(config, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def gan_dir(tmp_path_factory, data_dir, evaluator_dir):
    """A smoke GAN run evaluated every 3 steps (and at its end, step 6)."""
    config = load_config("gan", "smoke")
    config.data.data_dir = data_dir
    config.train.eval_every = 3
    config.eval.evaluator_workdir = str(evaluator_dir)
    config.eval.best_mode = "max"  # so that a later step is certain to count as best
    config.eval.best_metric = "precision_digits"
    workdir = tmp_path_factory.mktemp("gan")
    train.train_and_evaluate(config, str(workdir))
    return workdir


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluator_trains_and_writes_its_test_accuracy(evaluator_dir):
    accuracy = json.loads((evaluator_dir / "accuracy.json").read_text())
    assert accuracy["step"] == 6 and accuracy["num"] == 64
    for key in ("label", "fg", "bg", "seen", "held_out"):
        assert 0.0 <= accuracy[f"test_accuracy_{key}"] <= 1.0
    assert (evaluator_dir / "checkpoints" / "6").exists()
    assert not (evaluator_dir / "samples").exists()  # nothing to draw
    logged = [r for r in _rows(evaluator_dir / "metrics.jsonl") if "test_accuracy" in r]
    assert [r["step"] for r in logged] == [3, 6]


def test_digit_head_reads_a_colour_free_stroke_map(evaluator_dir, data_dir):
    """Recolouring (a per-channel affine map, as augmentation does) leaves a two-colour
    image's stroke map unchanged, and real test images' map and digit logits all but
    unchanged; the colour heads change."""
    config, family, variables = runs.load_run(str(evaluator_dir))
    images = jnp.asarray(suite.load_split(config, "test", 16, data_dir)["image"])
    recolour = lambda x: jnp.array([-0.5, 0.9, 0.3]) * x[..., ::-1] + jnp.array([0.2, 0.0, -0.4])
    recoloured = recolour(images)
    strokes = stroke_map(images)
    assert strokes.shape == (16, 32, 32, 1)
    assert float(jnp.max(strokes[:, :, 0])) == -1.0  # the left column is background
    assert float(jnp.max(strokes)) == 1.0  # the farthest pixels are foreground
    # An exact two-colour image (each real digit snapped to red on blue): the map is invariant.
    two = jnp.where(strokes > 0, jnp.array([1.0, -1.0, -1.0]), jnp.array([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(stroke_map(recolour(two)), stroke_map(two), atol=1e-4)
    # Real (resized) digits have blended edge pixels off the two-colour line, and the 10%
    # farthest can swap a pixel under recolouring: the maps, and the logits, agree closely.
    np.testing.assert_allclose(stroke_map(recoloured), strokes, atol=2e-2)
    assert float(jnp.mean(jnp.abs(stroke_map(recoloured) - strokes))) < 1e-3
    _, logits = family.net.apply(variables, images)
    _, logits_recoloured = family.net.apply(variables, recoloured)
    np.testing.assert_allclose(logits_recoloured["label"], logits["label"], atol=1e-2)
    assert (logits_recoloured["label"].argmax(-1) == logits["label"].argmax(-1)).all()
    assert not np.allclose(logits_recoloured["fg"], logits["fg"], atol=1e-2)


def test_blur_augmentation_is_a_normalised_gaussian():
    impulse = jnp.zeros((7, 7, 1)).at[3, 3, 0].set(1.0)
    np.testing.assert_array_equal(gaussian_blur(impulse, 0.0), impulse)
    taps = np.exp(-(np.arange(-2, 3) ** 2) / 2.0)
    taps /= taps.sum()
    np.testing.assert_allclose(
        gaussian_blur(impulse, 1.0)[1:6, 1:6, 0], np.outer(taps, taps), atol=1e-6
    )
    flat = jnp.full((5, 5, 3), 0.3)
    np.testing.assert_allclose(gaussian_blur(flat, 0.7), flat, atol=1e-6)


def test_evaluator_heads_must_be_dataset_attributes(tmp_path, data_dir):
    config = load_config("evaluator", "smoke")
    config.data.data_dir = data_dir
    config.train.eval_every = 0
    config.model.heads = {"label": 10, "shape": 4}
    with pytest.raises(ValueError, match=r"names \['shape'\], which dataset 'digits_captions'"):
        train.train_and_evaluate(config, str(tmp_path))
    config.model.heads = {"label": 10, "fg": 3}
    with pytest.raises(ValueError, match="'fg' has value 5 but config.model.heads gives it 3"):
        train.train_and_evaluate(config, str(tmp_path / "b"))


def test_training_logs_eval_metrics_and_keeps_the_best_checkpoint(gan_dir):
    evals = [r for r in _rows(gan_dir / "metrics.jsonl") if "eval/fd_digits" in r]
    assert [r["step"] for r in evals] == [3, 6]
    for key in ("fd_digits", "kid_digits", "kid_digits_std", "precision_digits", "recall_digits"):
        assert all(isinstance(r[f"eval/{key}"], float) for r in evals)
    assert {"eval/consistency_seen", "eval/consistency_held_out"} <= set(evals[0])
    assert 0.0 <= evals[0]["eval/consistency_phrasing_held_out"] <= 1.0
    best = json.loads((gan_dir / "best.json").read_text())
    values = {r["step"]: r["eval/precision_digits"] for r in evals}
    assert best["metric"] == "precision_digits" and best["value"] == max(values.values())
    assert (gan_dir / "best" / str(best["step"])).exists()
    assert (gan_dir / "checkpoints" / "6").exists()  # resuming still finds the latest


def test_evaluate_prints_the_table_and_writes_the_report(gan_dir, evaluator_dir):
    stdout, _ = commands.run(
        evaluate_command, f"--workdir={gan_dir}", f"--evaluator_workdir={evaluator_dir}", "--judge"
    )
    assert "generated (step 6)" in stdout and "real train vs test" in stdout
    assert "read by the judge" in stdout
    headers = ("FD", "KID", "precision", "recall", "diversity", "HF power", "consistent", "seen")
    for header in (*headers, "held-out", "phrasings"):
        assert header in stdout
    report = json.loads((gan_dir / "eval" / "step_6.json").read_text())
    assert report["num_samples"] == 64 and report["reference_split"] == "train"
    assert report["feature_network"]["name"] == "evaluator"
    assert report["feature_network"]["test_accuracy"]["step"] == 6
    for row in ("generated", "reference"):
        for key in ("fd_digits", "kid_digits", "kid_digits_std", "precision_digits"):
            assert isinstance(report[row][key], float)
        assert 0.0 <= report[row]["consistency"] <= 1.0
        assert report[row]["diversity"] >= 0.0 and report[row]["hf_power_ratio"] > 0.0
    assert report["settings"]["diversity_samples"] == 4
    assert 0.0 <= report["generated"]["judge_consistency_held_out"] <= 1.0
    assert 0.0 <= report["generated"]["consistency_phrasing_held_out"] <= 1.0
    # The reference row: real train images against real test images, seen combinations only.
    assert report["reference"]["num"] == 64 and "consistency_held_out" not in report["reference"]
    assert "consistency_phrasing_held_out" not in report["reference"]


def test_evaluate_best_checkpoint(gan_dir, evaluator_dir):
    best = json.loads((gan_dir / "best.json").read_text())
    # The same captions as during training: the same number.
    overrides = {"evaluator_workdir": str(evaluator_dir), "num_samples": 32}
    report = evaluate.evaluate(str(gan_dir), best=True, overrides=overrides, reference=False)
    assert report["step"] == best["step"] and report["checkpoint"] == "best"
    assert report["generated"]["precision_digits"] == pytest.approx(best["value"])
    assert (gan_dir / "eval" / f"best_step_{best['step']}.json").exists()


def test_evaluate_without_evaluator_names_the_training_command(gan_dir, tmp_path):
    overrides = {"evaluator_workdir": str(tmp_path / "nothing")}
    with pytest.raises(FileNotFoundError) as error:
        evaluate.evaluate(str(gan_dir), overrides=overrides)
    command = f"python -m mmgen_jax.main --config=configs/evaluator.py --workdir={tmp_path}"
    assert command in str(error.value)


class _NoiseBlind:
    """A GAN that draws every image of a caption from the same noise (index 0)."""

    def __init__(self, gan):
        self.gan = gan

    def generate(self, variables, tokens, key, indices):
        return self.gan.generate(variables, tokens, key, jnp.zeros_like(indices))


def test_diversity_of_a_generator_that_ignores_its_noise_is_zero(gan_dir, evaluator_dir, data_dir):
    config, family, variables = runs.load_run(str(gan_dir))
    s = settings.with_defaults(config.eval)[0]
    s.evaluator_workdir, s.num_samples = str(evaluator_dir), 64
    measure = suite.Suite(config, s, s.num_samples, data_dir)
    assert measure.groups and "diversity" in measure.names()
    assert measure.diversity(_NoiseBlind(family), variables) == pytest.approx(0.0, abs=1e-6)
    assert measure.diversity(family, variables) > 0.01
    # The groups: test examples sharing (label, fg, bg), 2 or more of them.
    for group in measure.groups:
        for attribute in ("label", "fg", "bg"):
            assert len(set(measure.test[attribute][group])) == 1


class _Describer:
    """A GAN family plus the caption methods of the multimodal VAE, answering with the test
    set's own captions: a perfect describer, and joint samples that are real pairs."""

    capabilities = frozenset({base.TEXT_TO_IMAGE, base.IMAGE_TO_TEXT, base.JOINT})

    def __init__(self, gan, test):
        self.gan, self.test = gan, test

    def can(self, capability):
        return capability in self.capabilities

    def generate(self, variables, tokens, key, indices):
        return self.gan.generate(variables, tokens, key, indices)

    def describe(self, variables, images, key, indices, temperature=0.0):
        return jnp.asarray(self.test["text"])[indices]

    def joint(self, variables, key, indices):
        return jnp.asarray(self.test["image"])[indices], jnp.asarray(self.test["text"])[indices]


def test_caption_metrics_of_a_family_that_describes(gan_dir, evaluator_dir, data_dir):
    config, family, variables = runs.load_run(str(gan_dir))
    s = settings.with_defaults(config.eval)[0]
    s.evaluator_workdir, s.num_samples = str(evaluator_dir), 64
    measure = suite.Suite(config, s, s.num_samples, data_dir)
    values = measure.measure_run(_Describer(family, measure.test), variables)
    assert values["caption_bleu4"] == pytest.approx(1.0)
    assert values["caption_parsed"] == 1.0
    assert values["caption_label"] == values["caption_fg"] == values["caption_bg"] == 1.0
    # Real pairs: coherent exactly where the evaluator reads the real image right.
    _, read = measure.judge(measure.test["image"])
    right = np.logical_and.reduce([read[h] == measure.targets[h] for h in read])
    assert values["joint_coherence"] == pytest.approx(right.mean())


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory, data_dir, evaluator_dir):
    """A smoke VAE run (its config's model.joint_prior: a mixture of 4 components), evaluated
    at its end (step 6); workdir/fitted.json lists the priors that evaluation fitted. Its eval
    section is the smoke one of configs/gan.py (configs/vae.py:smoke keeps the full-size one:
    1,800 test examples, KID on 50 subsets of 500)."""
    config = load_config("vae", "smoke")
    config_variants.sibling(ROOT / "configs" / "vae.py", "common").smoke_eval(config)
    config.data.data_dir = data_dir
    config.train.eval_every = 6
    config.eval.evaluator_workdir = str(evaluator_dir)
    workdir = tmp_path_factory.mktemp("vae")
    fitted, fit = [], runs.with_joint_prior

    def spy(config, family, variables, prior, *args, **kwargs):
        fitted.append(prior)
        return fit(config, family, variables, prior, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "with_joint_prior", spy)
        train.train_and_evaluate(config, str(workdir))
    (workdir / "fitted.json").write_text(json.dumps(fitted))
    return workdir


@pytest.fixture(scope="module")
def vae_report(vae_dir, evaluator_dir):
    """The VAE run evaluated without likelihood (eval.iwae_samples=0), its prior the run's:
    (the report, the report as saved, the mixtures (or None) Suite.joint sampled z from)."""
    drawn_with, joint = [], suite.Suite.joint

    def spy(self, family, variables):
        drawn_with.append(variables.get("latent_mixture"))
        return joint(self, family, variables)

    overrides = {"evaluator_workdir": str(evaluator_dir), "iwae_samples": 0}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(suite.Suite, "joint", spy)
        report = evaluate.evaluate(str(vae_dir), overrides=overrides, reference=False)
    saved = json.loads((vae_dir / "eval" / "step_6.json").read_text())
    return report, saved, drawn_with


def test_evaluate_reports_the_test_likelihood_of_a_vae(vae_dir, evaluator_dir, vae_report):
    workdir = str(vae_dir)
    overrides = {"evaluator_workdir": str(evaluator_dir), "iwae_samples": 4}
    report = evaluate.evaluate(workdir, overrides=overrides, reference=False)
    generated = report["generated"]
    assert report["settings"]["iwae_samples"] == 4
    for key in ("log_p_joint", "log_p_image", "log_p_text", "image_bits_per_dim"):
        assert np.isfinite(generated[key]), key
    assert generated["log_p_text"] < 0  # a probability of discrete tokens
    assert "likelihood (IWAE bound, K=4, nats per test example)" in evaluate.table(report)
    # 0 measures no likelihood; a negative count is refused with the fix.
    report = vae_report[0]
    assert report["settings"]["iwae_samples"] == 0
    assert "log_p_joint" not in report["generated"] and "likelihood" not in evaluate.table(report)
    overrides["iwae_samples"] = -1
    with pytest.raises(ValueError, match=r"eval.iwae_samples=-1: use a count >= 1"):
        evaluate.evaluate(workdir, overrides=overrides, reference=False)


def _copy_with_model_fields(workdir, to, **changes):
    """A copy of the run in `workdir` whose config.json's model section has `changes`
    (None: the field removed, as in runs trained before it existed)."""
    shutil.copytree(workdir, to, ignore=shutil.ignore_patterns("eval"))
    path = to / "config.json"
    config = json.loads(path.read_text())
    for name, value in changes.items():
        config["model"].pop(name)
        if value is not None:
            config["model"][name] = value
    path.write_text(json.dumps(config))
    return str(to)


def test_evaluate_draws_joint_samples_from_the_runs_prior(
    vae_dir, evaluator_dir, vae_report, tmp_path, monkeypatch
):
    # During training: the mixture too, fitted for the evaluation at step 6.
    assert json.loads((vae_dir / "fitted.json").read_text()) == ["mixture"]
    logged = [r for r in _rows(vae_dir / "metrics.jsonl") if "eval/joint_coherence" in r]
    assert [r["step"] for r in logged] == [6]
    report, saved, drawn_with = vae_report
    assert report["joint_prior"] == "mixture"  # the smoke config's
    assert saved["joint_prior"] == "mixture"
    assert 0.0 <= report["generated"]["joint_coherence"] <= 1.0
    # Fitted once, with the config's components and examples, from eval.seed.
    config, family, variables = runs.load_run(str(vae_dir))
    s = report["settings"]
    expected = runs.with_joint_prior(
        config, family, variables, "mixture", s["seed"], s["batch_size"]
    )["latent_mixture"]
    assert len(drawn_with) == 1 and drawn_with[0]["means"].shape == (4, 8)
    np.testing.assert_array_equal(drawn_with[0]["means"], expected["means"])
    drawn_with = []  # the mixture (or None) each Suite.joint call samples z from
    joint = suite.Suite.joint

    def spy(self, family, variables):
        drawn_with.append(variables.get("latent_mixture"))
        return joint(self, family, variables)

    monkeypatch.setattr(suite.Suite, "joint", spy)
    # The override wins.
    overrides = {"evaluator_workdir": str(evaluator_dir), "iwae_samples": 0}
    report = evaluate.evaluate(
        str(vae_dir), overrides=overrides, reference=False, joint_prior="standard"
    )
    assert report["joint_prior"] == "standard" and drawn_with == [None]
    # A run trained before the fields existed: N(0, I).
    absent = dict.fromkeys(runs.JOINT_PRIOR_DEFAULTS)
    old = _copy_with_model_fields(vae_dir, tmp_path / "old", **absent)
    report = evaluate.evaluate(old, overrides=overrides, reference=False)
    assert report["joint_prior"] == "standard" and drawn_with == [None, None]
    # An unknown prior in config.json: one line naming it and the choices;
    # on the command line, --joint_prior overrides it.
    bad = _copy_with_model_fields(vae_dir, tmp_path / "bad", joint_prior="vamp")
    with pytest.raises(ValueError) as error:
        evaluate.evaluate(bad, overrides=overrides, reference=False)
    assert str(error.value) == (
        "model.joint_prior (the run's config.json)='vamp': use one of 'standard', 'mixture'"
    )
    flags = [
        f"--workdir={bad}",
        f"--evaluator_workdir={evaluator_dir}",
        "--iwae_samples=0",
        "--noreference",
    ]
    assert commands.fatal_lines(evaluate_command, *flags) == [f"FATAL: {error.value}"]
    _, stderr = commands.run(evaluate_command, *flags, "--joint_prior=mixture")
    assert "4 Gaussians fitted to the codes of 64 training pairs" in stderr
    assert json.loads((tmp_path / "bad" / "eval" / "step_6.json").read_text())["joint_prior"] == (
        "mixture"
    )


def test_joint_prior_on_a_run_without_joint_samples_is_refused(gan_dir):
    with pytest.raises(ValueError, match=r"--joint_prior=mixture: the 'gan' run in .* draws no"):
        evaluate.evaluate(str(gan_dir), joint_prior="mixture")


class _CaptionFollower:
    """A generator that understands captions of `patterns` only: image i spells out, in its
    pixel values, the (label, fg, bg) its caption states; any other caption gets (0, 0, 0),
    never right (fg != bg). The caption is read on the host, from the tokens it is given."""

    def __init__(self, patterns):
        self.patterns = set(patterns)

    def can(self, capability):
        return capability == base.TEXT_TO_IMAGE

    def _stated(self, tokens):
        out = np.zeros((len(tokens), 3), np.float32)
        for i, row in enumerate(np.asarray(tokens)):
            text = tokenizer.decode(row)
            if dd.pattern_of(text) in self.patterns:
                out[i] = list(dd.parse_caption(text).values())
        return out

    def generate(self, variables, tokens, key, indices):
        shape = jax.ShapeDtypeStruct((tokens.shape[0], 3), jnp.float32)
        stated = jax.pure_callback(self._stated, shape, tokens)
        return jnp.broadcast_to(stated[:, None, None, :] / 10, (tokens.shape[0], 32, 32, 3))


class _PixelJudge:
    """Reads back what `_CaptionFollower` spelled out: a judge that never errs."""

    heads = ("label", "fg", "bg")

    def __call__(self, images):
        stated = np.rint(np.asarray(images)[:, 0, 0, :] * 10).astype(np.int64)
        return None, dict(zip(self.heads, stated.T))


def test_consistency_on_held_out_phrasings(gan_dir, evaluator_dir, data_dir):
    config, _, variables = runs.load_run(str(gan_dir))
    s = settings.with_defaults(config.eval)[0]
    s.evaluator_workdir, s.num_samples = str(evaluator_dir), 64
    measure = suite.Suite(config, s, s.num_samples, data_dir)
    phrasings = measure.phrasings
    assert "consistency_phrasing_held_out" in measure.names()
    assert len(phrasings["caption"]) == 64
    assert {dd.pattern_of(c) for c in phrasings["caption"]} <= set(dd.HELD_OUT_PATTERNS)
    measure.judge = _PixelJudge()
    # Following the train phrasings only: every test caption right, no held-out phrasing.
    templates_only = _CaptionFollower(dd.TRAIN_PATTERNS)
    _, read = measure.judge(measure.generate(templates_only, variables))
    assert metrics.consistency(read, measure.targets)["consistency"] == 1.0
    score = measure.phrasing_consistency(templates_only, variables)
    assert score == {"consistency_phrasing_held_out": 0.0}
    # Following every phrasing of the grammar: all right.
    follower = _CaptionFollower(range(len(dd.PATTERNS)))
    values = measure.measure_run(follower, variables)
    assert values["consistency"] == values["consistency_phrasing_held_out"] == 1.0


def test_datasets_without_held_out_phrasings_skip_the_metric(
    gan_dir, evaluator_dir, data_dir, monkeypatch
):
    """A split the prepared dataset lacks (a version prepared before it, say): no metric, no
    error; the table shows '-'."""
    older = dataclasses.replace(domains.DIGITS, phrasing_split="test_phrasings_of_3.0")
    monkeypatch.setitem(domains._DOMAINS, dd.NAME, older)
    config, family, variables = runs.load_run(str(gan_dir))
    s = settings.with_defaults(config.eval)[0]
    s.evaluator_workdir, s.num_samples = str(evaluator_dir), 32
    measure = suite.Suite(config, s, s.num_samples, data_dir)
    assert measure.phrasings is None and "consistency_phrasing_held_out" not in measure.names()
    values = measure.measure_run(family, variables, likelihood=False)
    assert "consistency_phrasing_held_out" not in values and "consistency_held_out" in values
