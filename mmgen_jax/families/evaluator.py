"""The domain evaluator as a family: an attribute classifier trained by the usual loop.

Trained with `python -m mmgen_jax.main --config=configs/evaluator.py --workdir=runs/evaluator`,
so checkpoints, resumption and progress come from `train.train_and_evaluate`. It draws
nothing (capability FEATURES only), so the loop writes no sample grids for it. Its features
and attribute predictions are read by `mmgen_jax.evaluation.extractors`.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmgen_jax import losses
from mmgen_jax.families import base
from mmgen_jax.models.classifier import AttributeClassifier


@flax.struct.dataclass
class EvaluatorState:
    step: jax.Array  # int32 scalar: optimisation steps taken
    rng: jax.Array  # raw uint32 PRNG key; per step and example via fold_in (augmentation)
    params: Any
    opt_state: Any


class Evaluator(base.Family):
    """An attribute classifier: one head per `config.model.heads` entry ({feature: classes})."""

    capabilities = frozenset({base.FEATURES})

    def __init__(self, config, axis_name="data"):
        super().__init__(config, axis_name)
        m = config.model
        self.heads = {name: int(k) for name, k in m.heads.items()}
        if "colour_width" not in m:
            raise ValueError(
                "this evaluator was trained before the evaluator had a shape trunk (stroke map) "
                "and a colour trunk, and its checkpoint does not fit today's network: retrain "
                "it with `python -m mmgen_jax.main --config=configs/evaluator.py --workdir=DIR`"
            )
        unknown = sorted(set(m.colour_invariant_heads) - set(self.heads))
        if unknown:
            raise ValueError(
                f"config.model.colour_invariant_heads names {unknown}, not heads "
                f"({sorted(self.heads)}); list only names in config.model.heads"
            )
        self.net = AttributeClassifier(
            heads=self.heads,
            shape_heads=tuple(m.colour_invariant_heads),
            width=m.width,
            feature_dim=m.feature_dim,
            colour_width=m.colour_width,
            colour_feature_dim=m.colour_feature_dim,
        )
        self.tx = optax.adam(config.train.lr)

    def init(self, rng) -> EvaluatorState:
        key_net, key_run = jax.random.split(rng)
        size = self.config.data.image_size
        params = self.net.init(key_net, jnp.zeros((1, size, size, 3), jnp.float32))["params"]
        return EvaluatorState(
            step=jnp.zeros((), jnp.int32),
            rng=key_run,
            params=params,
            opt_state=self.tx.init(params),
        )

    def device_batch(self, batch):
        """Images, the attribute of each head and the stream index (for augmentation)."""
        missing = [name for name in self.heads if name not in batch]
        if missing:
            raise ValueError(
                f"config.model.heads names {missing}, which dataset "
                f"{self.config.data.name!r} does not provide (its batch has "
                f"{sorted(k for k in batch if k not in ('image', 'text', 'index'))}); "
                f"list only the dataset's attributes in --config.model.heads"
            )
        out = {"image": batch["image"], "index": base.device_index(batch["index"])}
        for name, k in self.heads.items():
            values = np.asarray(batch[name])
            if values.min() < 0 or values.max() >= k:
                raise ValueError(
                    f"attribute {name!r} has value {values.max()} but config.model.heads gives "
                    f"it {k} classes; set it to the dataset's number of classes"
                )
            out[name] = values.astype("int32")
        return out

    def example_batch(self, batch_size, seed):
        return base.synthetic_batch(self.config, batch_size, seed, labels=self.heads)

    def augment(self, key, images, index):
        """-> (augmented images, (B,) 1.0 where the colours are untouched, else 0.0).

        Per example, from its stream index: a random shift of up to `augment_shift` pixels
        (edge-padded), a Gaussian blur of random width up to `augment_blur` pixels (generated
        strokes are often smeared), Gaussian pixel noise, and with probability `recolour_prob` new
        colours: x_c -> a_c x_c + b_c per RGB channel, |a_c| in [0.3, 1] with a random sign
        and b_c keeping [-1, 1]. That maps a two-colour image (stroke intensity t:
        t fg + (1 - t) bg) to the same strokes in another colour pair. Only the
        `colour_invariant_heads` learn from recoloured images. They read the colour-free
        stroke map (`models.classifier.stroke_map`), which recolouring leaves nearly
        unchanged; the recoloured images make them robust to the map's small departures
        (noise, blended colours) in colour pairs that training lacks.
        """
        t = self.config.train
        s = t.augment_shift

        def one(image, i):
            k_shift, k_noise, k_colour, k_scale, k_sign, k_offset, k_blur = jax.random.split(
                jax.random.fold_in(key, i), 7
            )
            if s:
                padded = jnp.pad(image, ((s, s), (s, s), (0, 0)), mode="edge")
                dy, dx = jax.random.randint(k_shift, (2,), 0, 2 * s + 1)
                image = jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)
            recolour = jax.random.bernoulli(k_colour, t.recolour_prob)
            sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (3,)), -1.0, 1.0)
            scale = sign * jax.random.uniform(k_scale, (3,), minval=0.3, maxval=1.0)
            room = 1.0 - jnp.abs(scale)
            offset = jax.random.uniform(k_offset, (3,), minval=-room, maxval=room)
            recoloured = scale * image + offset
            image = jnp.where(recolour, recoloured, image)
            if t.augment_blur:
                sigma = jax.random.uniform(k_blur, (), maxval=t.augment_blur)
                image = gaussian_blur(image, sigma)
            noisy = image + t.augment_noise * jax.random.normal(k_noise, image.shape)
            return noisy, 1.0 - recolour.astype(jnp.float32)

        return jax.vmap(one)(images, index)

    def train_step(self, state: EvaluatorState, batch):
        key = jax.random.fold_in(state.rng, state.step)
        images, untouched = self.augment(key, batch["image"], batch["index"])
        invariant = set(self.config.model.colour_invariant_heads)
        weights = {n: None if n in invariant else untouched for n in self.heads}

        def loss_fn(params):
            _, logits = self.net.apply({"params": params}, images)
            per_head = {
                n: losses.classification_loss(logits[n], batch[n], weights[n]) for n in self.heads
            }
            # Train accuracy of each head on the images it learns from.
            accuracy = {
                f"acc_{n}": _weighted_mean(jnp.argmax(logits[n], -1) == batch[n], weights[n])
                for n in self.heads
            }
            return sum(per_head.values()), accuracy

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, self.axis_name)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = jax.lax.pmean({"loss": loss, **accuracy}, self.axis_name)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def sampling_variables(self, state: EvaluatorState):
        """The variables the classifier runs with (the name every family shares)."""
        return {"params": state.params}

    def features_and_predictions(self, variables, images):
        """images in [-1, 1] -> (penultimate features, {head: predicted class int32})."""
        features, logits = self.net.apply(variables, images)
        return features, {n: jnp.argmax(v, -1).astype(jnp.int32) for n, v in logits.items()}


def gaussian_blur(image, sigma, radius=2):
    """(H, W, C) image blurred by a separable Gaussian of std `sigma` pixels (edge-padded);
    sigma 0 leaves it unchanged."""
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    w = jnp.exp(-(taps**2) / (2.0 * sigma**2 + 1e-6))
    w = w / jnp.sum(w)
    h, wd = image.shape[:2]
    p = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    p = sum(w[k] * p[k : k + h] for k in range(2 * radius + 1))
    return sum(w[k] * p[:, k : k + wd] for k in range(2 * radius + 1))


def _weighted_mean(values, weights):
    values = values.astype(jnp.float32)
    if weights is None:
        return jnp.mean(values)
    return jnp.sum(weights * values) / jnp.maximum(jnp.sum(weights), 1e-6)
