"""A training config checked before anything compiles: one line per problem, naming the
field and what it accepts.

The allowed values of enum-like fields are the constants of the modules that use them;
nothing here keeps its own copy. Checks apply to the fields a config has (a VAE config has
no `train.loss`), so one function serves every family.
"""

from mmgen_jax import elbo, families, losses, runs
from mmgen_jax.evaluation import extractors, settings
from mmgen_jax.families import flow, gan, vae
from mmgen_jax.models import dcgan, layers, text

# The GAN also accepts "none": the batch carries precomputed caption embeddings
# (families/gan.PrecomputedText; the benchmark's dcgan32 variant).

# field -> allowed values, for the fields a config has.
CHOICES = {
    "model.family": tuple(families.FAMILIES),
    "model.fusion": vae.FUSIONS,
    "model.joint_prior": runs.JOINT_PRIORS,
    "model.conditioning": dcgan.CONDITIONINGS,
    "model.d_norm": dcgan.D_NORMS,
    "model.g_impl": layers.IMPLS,
    "model.g_upsample": dcgan.UPSAMPLES,
    "model.d_impl": layers.IMPLS,
    "train.loss": losses.LOSSES,
    "train.update_order": losses.UPDATE_ORDERS,
    "train.image_likelihood": elbo.IMAGE_LIKELIHOODS,
    "model.sampler": flow.SAMPLERS,
    "train.time_sampling": flow.TIME_SAMPLINGS,
    "eval.extractor": tuple(extractors.REGISTRY),
    "eval.best_mode": settings.BEST_MODES,
}
DTYPES = ("float32", "bfloat16", "float16")  # model.dtype: compute dtype (params stay float32)

# field -> smallest value allowed (integers).
AT_LEAST = {
    "train.num_steps": 0,
    "train.batch_size": 1,
    "model.sample_steps": 1,
    "model.joint_mixture_components": 1,
    "model.joint_mixture_examples": 1,
    "train.max_to_keep": 1,
    "train.steps_per_dispatch": 1,
    "data.image_size": 1,
    "data.max_text_len": 1,
    "eval.batch_size": 1,
    "eval.num_samples": 1,
    "eval.train_num_samples": 1,
    "eval.diversity_samples": 2,
    "eval.diversity_captions": 1,
}


class ConfigError(ValueError):
    """Invalid config fields; `problems` holds one line each."""

    def __init__(self, problems):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def problems(config) -> list[str]:
    """One line per invalid field of `config` (empty when it is valid)."""
    found = []
    for path, allowed in _choices(config).items():
        value = _get(config, path)
        if value is not _MISSING and value not in allowed:
            found.append(f"config.{path}={value!r}: use one of {', '.join(map(repr, allowed))}")
    for path, low in {**AT_LEAST, **_every_fields(config)}.items():
        value = _get(config, path)
        if value is _MISSING:
            continue
        off = " (0 = off)" if path.endswith("_every") else ""
        if isinstance(value, bool) or not isinstance(value, int):
            found.append(f"config.{path}={value!r}: must be an integer >= {low}{off}")
        elif value < low:
            found.append(f"config.{path}={value!r}: must be >= {low}{off}")
    dtype = _get(config, "model.dtype")
    if dtype is not _MISSING and dtype not in DTYPES:
        found.append(f"config.model.dtype={dtype!r}: use one of {', '.join(map(repr, DTYPES))}")
    return found


def check(config):
    """Raises `ConfigError` listing every problem of `config`."""
    found = problems(config)
    if found:
        raise ConfigError(found)


def _choices(config):
    choices = dict(CHOICES)
    encoders = text.KINDS
    if _get(config, "model.family") == "gan":
        encoders += (gan.PRECOMPUTED_TEXT,)
    choices["model.text_encoder"] = encoders
    return choices


def _every_fields(config):
    """Every `*_every` field of every section: steps between actions, 0 = off."""
    return {
        f"{section}.{name}": 0
        for section, fields in config.items()
        if hasattr(fields, "items")
        for name in fields
        if name.endswith("_every")
    }


_MISSING = object()


def _get(config, path):
    node = config
    for name in path.split("."):
        if not hasattr(node, "get") or name not in node:
            return _MISSING
        node = node[name]
    return node
