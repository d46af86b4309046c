"""A run measured in full: the report `python -m mmgen_jax.evaluate` writes and its table."""

import logging
import os

from mmgen_jax import runs, writers
from mmgen_jax.data import prepare
from mmgen_jax.evaluation import settings as settings_lib
from mmgen_jax.evaluation import suite
from mmgen_jax.families import base

log = logging.getLogger("mmgen_jax")

# Columns of the table: (metric name, {tag} standing for the feature network's tag; header).
_COLUMNS = (
    ("fd_{tag}", "FD"),
    ("kid_{tag}", "KID"),
    ("precision_{tag}", "precision"),
    ("recall_{tag}", "recall"),
    ("diversity", "diversity"),
    ("hf_power_ratio", "HF power"),
    ("consistency", "consistent"),
    ("consistency_seen", "seen"),
    ("consistency_held_out", "held-out"),
    ("consistency_phrasing_held_out", "phrasings"),
)


def evaluate(
    workdir,
    step=None,
    best=False,
    overrides=None,
    data_dir=None,
    reference=True,
    judge=False,
    sampling=None,
    joint_prior=None,
):
    """Measures the run in `workdir`; returns the report written to WORKDIR/eval/.
    `sampling`: sampling-time model fields (runs.SAMPLING_FIELDS) to draw with;
    `joint_prior`: the prior of joint samples (runs.JOINT_PRIORS; None = the run's)."""
    workdir = os.path.abspath(workdir)
    checkpoints = "best" if best else "checkpoints"
    step = runs.resolve_step(workdir, step, checkpoints) if _has_dir(workdir, checkpoints) else None
    if step is None:
        raise FileNotFoundError(
            f"no checkpoint in {os.path.join(workdir, checkpoints)}: train first with "
            f"`python -m mmgen_jax.main --config=... --workdir={workdir}`"
            + (
                " and train.eval_every > 0 (best checkpoints are kept by evaluation)"
                if best
                else ""
            )
        )
    config, family, variables = runs.load_run(workdir, step, checkpoints, sampling)
    prior = runs.joint_prior(config, joint_prior)  # a bad name fails before the test set loads
    if joint_prior and not family.can(base.JOINT):
        raise ValueError(
            f"--joint_prior={joint_prior}: the {config.model.family!r} run in {workdir} draws no "
            f"joint samples; the flag applies to runs that do (configs/vae.py)"
        )
    settings, missing = settings_lib.with_defaults(config.get("eval"))
    if missing:
        log.warning("The run's config.json has no eval field(s) %s: using the defaults.", missing)
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    data_dir = data_dir or config.data.data_dir or prepare.default_data_dir()
    measure = suite.Suite(config, settings, settings.num_samples, data_dir)
    joint = {}
    if family.can(base.JOINT):  # fitted once, from eval.seed: the same prior every time
        variables = runs.with_joint_prior(
            config, family, variables, prior, settings.seed, settings.batch_size, data_dir
        )
        joint["joint_prior"] = prior
    report = {
        "workdir": workdir,
        "step": int(step),
        "checkpoint": checkpoints,
        "dataset": config.data.name,
        "eval_split": config.data.eval_split,
        "num_samples": measure.num,
        "feature_network": measure.extractor.describe(),
        "feature_tag": measure.extractor.tag,
        "feature_scale": measure.feature_scale,  # features are divided by it (see Suite)
        "consistency_network": measure.judge.describe(),
        "settings": settings.to_dict(),
        "defaults_filled": missing,
        **joint,
        "generated": measure.measure_run(family, variables, cross_check=judge),
    }
    if reference:
        report["reference_split"] = settings.reference_split
        report["reference"] = measure.reference(settings.reference_split)
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    name = f"{'best_' if best else ''}step_{step}.json"
    writers.write_json(os.path.join(out_dir, name), report)
    report["path"] = os.path.join(out_dir, name)
    return report


def _has_dir(workdir, name):
    return os.path.isdir(os.path.join(workdir, name))


def table(report):
    """The report as a fixed-width text table: generated row, then the reference row."""
    tag = report["feature_tag"]
    generated = report["generated"]
    rows = [(f"generated (step {report['step']})", generated)]
    judged = {k[len("judge_") :]: v for k, v in generated.items() if k.startswith("judge_")}
    if judged:
        rows.append(("  same, read by the judge", judged))
    if "reference" in report:
        rows.append((f"real {report['reference_split']} vs test", report["reference"]))
    columns = [(key.format(tag=tag), head) for key, head in _COLUMNS]
    width = max(len(label) for label, _ in rows)
    lines = [" ".join([" " * width] + [f"{head:>10}" for _, head in columns])]
    for label, values in rows:
        cells = [f"{values[key]:>10.4f}" if key in values else f"{'-':>10}" for key, _ in columns]
        lines.append(" ".join([f"{label:<{width}}"] + cells))
    extra = {k: v for k, v in generated.items() if k.startswith(("caption_", "joint_"))}
    if extra:
        lines.append("text: " + " ".join(f"{k}={v:.4f}" for k, v in extra.items()))
    if "log_p_joint" in generated:
        lines.append(
            f"likelihood (IWAE bound, K={report['settings']['iwae_samples']}, nats per test "
            f"example): log p(image, caption)={generated['log_p_joint']:.2f} "
            f"log p(image)={generated['log_p_image']:.2f} "
            f"log p(caption)={generated['log_p_text']:.2f} "
            f"image bits/dim={generated['image_bits_per_dim']:.4f}"
        )
    lines.append(
        f"{report['num_samples']} test captions of {report['dataset']}/{report['eval_split']}; "
        f"features: {report['feature_network']['name']} ({tag}); FD/KID/P-R against the real "
        f"test images; diversity: spread of {report['settings']['diversity_samples']} images "
        f"per caption / spread of real images of the same attributes; HF power: share of "
        f"luminance power above half Nyquist / real test's (1 = like real); consistency: share "
        f"of images whose evaluator-read attributes all match the caption (seen / held-out "
        f"combinations; phrasings: captions in sentence patterns held out of training)"
    )
    return "\n".join(lines)
